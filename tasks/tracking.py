"""All MLflow code of LensLLM: runs, metrics, artifacts, dataset inputs, models and registry.

Every function takes the tracking URI as an argument and talks to MLflow through an
``MlflowClient`` bound to that URI, so nothing depends on ``MLFLOW_TRACKING_URI`` or on the
fluent API's process-global active run; functions are re-entrant by run id and safe to call
from several threads (SQLite backend included). The one exception is
``mlflow.transformers.log_model``, which only exists in fluent form: it runs under a lock with
the tracking URI switched for the duration of the call (see ``log_transformers_model``).

Registry *policy* (the promotion gate) lives in ``tasks/registry.py``; this module applies it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.run_status import RunStatus
from mlflow.utils.time import get_current_time_millis

logger = logging.getLogger(__name__)

#: Tag keys used across the project (MLflow UI filters and idempotence look-ups use them).
TAG_GIT_COMMIT = "lensllm.git_commit"
TAG_CONFIG_HASH = "lensllm.config_hash"
TAG_DATA_FINGERPRINT = "lensllm.data_fingerprint"
TAG_PROBE_KEY = "lensllm.probe_key"
TAG_CANDIDATE = "lensllm.candidate"
TAG_RUN_KIND = "lensllm.run_kind"

_PARENT_RUN_TAG = "mlflow.parentRunId"
_RUN_NAME_TAG = "mlflow.runName"
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_VALUE_CHARS = 6000

# --------------------------------------------------------------------------------------------
# Secrets: never logged as params or tags.
# --------------------------------------------------------------------------------------------
_SECRET_KEY_WORDS = {"secret", "password", "passwd", "token", "credential", "credentials"}
_SECRET_KEY_SUBSTRINGS = ("access_key", "accesskey", "api_key", "apikey", "private_key", "secret")
_SECRET_VALUE_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub token
    re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}\b"),  # OpenAI-style key
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-]{16,}"),  # HTTP bearer token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"[a-z][a-z0-9+.\-]*://[^/\s:@]+:[^/\s@]+@"),  # URL with user:password@
)


def is_secret(key: str, value: Any = None) -> bool:
    """Whether a param/tag looks like a credential (by key name or by value).

    Key names are split into words on non-alphanumerics, so ``hf_token`` and ``DB_PASSWORD``
    are secrets while ``max_new_tokens`` and ``tokenizer`` are not.
    """
    lowered = key.lower()
    words = set(re.split(r"[^a-z0-9]+", lowered))
    if words & _SECRET_KEY_WORDS or any(s in lowered for s in _SECRET_KEY_SUBSTRINGS):
        return True
    if value is None:
        return False
    text = str(value)
    return any(p.search(text) for p in _SECRET_VALUE_PATTERNS)


def filter_secrets(items: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop entries whose key or value looks like a credential (the key is logged, never the
    value)."""
    kept: dict[str, Any] = {}
    for key, value in (items or {}).items():
        if is_secret(str(key), value):
            logger.warning("not logging %r to MLflow: it looks like a credential", key)
            continue
        kept[str(key)] = value
    return kept


# --------------------------------------------------------------------------------------------
# Tracking URI, client, experiments
# --------------------------------------------------------------------------------------------
def default_tracking_uri(root: str = ".lensllm") -> str:
    """The project's local tracking URI: ``sqlite:///<abs root>/mlflow.db``.

    Artifacts of experiments created through this module go under ``<root>/mlartifacts``.
    The folder is created if needed.
    """
    base = Path(root).expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'mlflow.db'}"


def _artifact_root_for(tracking_uri: str) -> str | None:
    """``file://`` URI of ``<db folder>/mlartifacts`` for a SQLite or file store, else None
    (a server decides artifact locations itself)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        db_path = unquote(tracking_uri[len("sqlite:///") :])
        if not db_path or db_path == ":memory:":
            return None
        return (Path(db_path).resolve().parent / "mlartifacts").as_uri()
    if parsed.scheme in ("", "file"):
        store = Path(unquote(parsed.path if parsed.scheme else tracking_uri)).resolve()
        return (store.parent / "mlartifacts").as_uri()
    return None


def get_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` whose tracking and registry URIs are both ``tracking_uri``."""
    if not tracking_uri or not isinstance(tracking_uri, str):
        raise ValueError(
            "tracking_uri must be a non-empty string such as 'sqlite:///path/mlflow.db' or "
            "'http://127.0.0.1:5000'; use tasks.tracking.default_tracking_uri() for the local store"
        )
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


_experiment_lock = threading.Lock()


def ensure_experiment(tracking_uri: str, experiment: str) -> str:
    """Return the id of ``experiment``, creating it (artifacts under ``mlartifacts`` next to a
    SQLite database) when it does not exist."""
    if not experiment:
        raise ValueError("experiment must be a non-empty experiment name")
    client = get_client(tracking_uri)
    with _experiment_lock:  # two threads creating the same experiment would race
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ValueError(
                    f"MLflow experiment {experiment!r} is deleted; restore it "
                    f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) "
                    "or choose another experiment name"
                )
            return found.experiment_id
        return client.create_experiment(
            experiment, artifact_location=_artifact_root_for(tracking_uri)
        )


# --------------------------------------------------------------------------------------------
# Small plain-data helpers
# --------------------------------------------------------------------------------------------
def _params(params: Mapping[str, Any] | None) -> list[Param]:
    out = []
    for key, value in filter_secrets(params).items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out.append(Param(key, text[:_MAX_PARAM_VALUE_CHARS]))
    return out


def _tags(tags: Mapping[str, Any] | None) -> list[RunTag]:
    return [RunTag(k, str(v)) for k, v in filter_secrets(tags).items()]


def _log_batch(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: Iterable[Metric] = (),
    params: Iterable[Param] = (),
    tags: Iterable[RunTag] = (),
) -> None:
    """Log in batches that respect MLflow's per-request limits."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    for i in range(0, len(params), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + _MAX_PARAMS_PER_BATCH])
    if tags:
        client.log_batch(run_id, tags=tags)
    for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH])


def _metric(key: str, value: Any, step: int, timestamp: int) -> Metric:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}")
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"metric {key!r}: step must be an int (subset size), got {step!r}")
    return Metric(key, float(value), timestamp, step)


def _create_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, Any] | None,
    parent_run_id: str | None = None,
) -> tuple[MlflowClient, str]:
    client = get_client(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, experiment)
    run_tags = filter_secrets(tags)
    run_tags[_RUN_NAME_TAG] = run_name
    if parent_run_id:
        run_tags[_PARENT_RUN_TAG] = parent_run_id
    run = client.create_run(
        experiment_id, run_name=run_name, tags={k: str(v) for k, v in run_tags.items()}
    )
    return client, run.info.run_id


# --------------------------------------------------------------------------------------------
# Replay benchmark
# --------------------------------------------------------------------------------------------
def log_benchmark_run(
    *,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: dict,
    tags: dict,
    metrics: list[tuple[str, float, int]],
    artifacts_dir: str,
) -> str:
    """Log one finished benchmark run and return its run id.

    Parameters
    ----------
    tracking_uri, experiment, run_name
        Where to log; the experiment is created when missing.
    params, tags
        Plain values; entries that look like credentials are dropped.
    metrics
        ``(key, value, step)`` triples (e.g. ``("ats/pearcorr", 0.909, 204800)``).
    artifacts_dir
        Every file below this folder is logged as an artifact (relative paths kept).
    """
    folder = Path(artifacts_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"artifacts_dir {str(folder)!r} is not a folder; write the benchmark outputs there "
            "first or pass the folder that holds them"
        )
    now = get_current_time_millis()
    metric_rows = [_metric(str(k), v, s, now) for k, v, s in metrics]
    client, run_id = _create_run(tracking_uri, experiment, run_name, tags)
    try:
        _log_batch(
            client,
            run_id,
            metrics=metric_rows,
            params=_params(params),
            tags=[RunTag(TAG_RUN_KIND, "benchmark")],
        )
        client.log_artifacts(run_id, str(folder))
    except Exception:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id
