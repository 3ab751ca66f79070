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
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.entities.run_status import RunStatus
from mlflow.utils.time import get_current_time_millis
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.locks import held, lock_path
from tasks.registry import Contender, decide_promotion

logger = logging.getLogger(__name__)

#: Tag keys used across the project (MLflow UI filters and idempotence look-ups use them).
TAG_GIT_COMMIT = "lensllm.git_commit"
TAG_CONFIG_HASH = "lensllm.config_hash"
TAG_DATA_FINGERPRINT = "lensllm.data_fingerprint"
TAG_PROBE_KEY = "lensllm.probe_key"
TAG_CANDIDATE = "lensllm.candidate"
TAG_RUN_KIND = "lensllm.run_kind"
TAG_RESUMED = "lensllm.resumed"

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


class TrackingUnavailableError(ConnectionError):
    """The MLflow tracking server cannot be reached: start it or fix the URI, then re-run."""


def _display_uri(tracking_uri: str) -> str:
    """The URI without any ``user:password@`` part (never print credentials)."""
    return re.sub(r"//[^/@\s]*@", "//", tracking_uri)


def unreachable_error(tracking_uri: str, timeout: float = 5.0) -> TrackingUnavailableError | None:
    """A :class:`TrackingUnavailableError` when ``tracking_uri`` is an HTTP(S) server that does
    not answer its ``/health`` endpoint, else None (local stores are always reachable)."""
    import requests

    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return None
    base = tracking_uri.rstrip("/")
    try:
        response = requests.get(base + "/health", timeout=timeout)
        why = None if response.ok else f"HTTP {response.status_code}"
    except requests.RequestException as err:
        why = type(err).__name__
    if why is None:
        return _artifact_store_error(base, timeout)
    return TrackingUnavailableError(
        f"MLflow tracking server {_display_uri(tracking_uri)} is unreachable ({why}). "
        "Start it (`lensllm stack up`) or fix tracking.uri / MLFLOW_TRACKING_URI, then run the "
        "same command again: finished probes stay in the local cache, nothing is recomputed, "
        "and they are logged then."
    )


def _artifact_store_error(base: str, timeout: float) -> TrackingUnavailableError | None:
    """A server that proxies artifacts (``mlflow server --artifacts-destination``, as on the
    stack) is only usable when its artifact store answers: list the store's root once. A
    server that does not proxy artifacts answers 404 here and is not checked further."""
    import requests

    try:
        response = requests.get(
            base + "/api/2.0/mlflow-artifacts/artifacts", timeout=max(timeout, 15.0)
        )
        if response.status_code < 500:
            return None
        why = f"HTTP {response.status_code}"
    except requests.RequestException as err:
        why = type(err).__name__
    return TrackingUnavailableError(
        f"MLflow tracking server {_display_uri(base)} answers, but its artifact store does not "
        f"({why}): check the S3 server behind it (`lensllm stack status`), then run the same "
        "command again: finished probes stay in the local cache, nothing is recomputed, and "
        "they are logged then."
    )


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailableError` when the tracking server does not answer."""
    error = unreachable_error(tracking_uri, timeout)
    if error is not None:
        raise error


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


# --------------------------------------------------------------------------------------------
# Generic run helpers (re-entrant by run id, thread-safe)
# --------------------------------------------------------------------------------------------
def log_metrics(tracking_uri: str, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
    """Log ``(key, value, step)`` triples to an existing run."""
    now = get_current_time_millis()
    rows = [_metric(str(k), v, s, now) for k, v, s in metrics]
    _log_batch(get_client(tracking_uri), run_id, metrics=rows)


def log_params_and_tags(
    tracking_uri: str, run_id: str, params: dict | None = None, tags: dict | None = None
) -> None:
    """Log params and tags (credentials filtered) to an existing run."""
    _log_batch(get_client(tracking_uri), run_id, params=_params(params), tags=_tags(tags))


def log_artifact_file(
    tracking_uri: str, run_id: str, path: str, artifact_path: str | None = None
) -> str:
    """Log one local file under ``artifact_path`` of the run; return its artifact path."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"artifact file {str(file)!r} does not exist or is not a file")
    get_client(tracking_uri).log_artifact(run_id, str(file), artifact_path)
    return f"{artifact_path}/{file.name}" if artifact_path else file.name


def log_text(tracking_uri: str, run_id: str, text: str, artifact_file: str) -> str:
    """Log a text artifact (e.g. the resolved YAML config); return its artifact path."""
    get_client(tracking_uri).log_text(run_id, text, artifact_file)
    return artifact_file


def log_json(tracking_uri: str, run_id: str, data: Any, artifact_file: str) -> str:
    """Log a JSON-serialisable value as an artifact; return its artifact path."""
    get_client(tracking_uri).log_dict(run_id, data, artifact_file)
    return artifact_file


def log_table(tracking_uri: str, run_id: str, rows: list[dict], artifact_file: str) -> str:
    """Log a table given as a list of row dicts (shown as a table in the MLflow UI).

    ``artifact_file`` must end with ``.json`` (MLflow's table format).
    """
    if not artifact_file.endswith(".json"):
        raise ValueError(f"artifact_file {artifact_file!r} must end with '.json' for log_table")
    import pandas as pd

    get_client(tracking_uri).log_table(run_id, pd.DataFrame(rows), artifact_file)
    return artifact_file


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Terminate a run with status FINISHED, FAILED or KILLED."""
    allowed = ("FINISHED", "FAILED", "KILLED")
    if status not in allowed:
        raise ValueError(f"status must be one of {allowed}, got {status!r}")
    get_client(tracking_uri).set_terminated(run_id, status)


def _quote(value: str) -> str:
    """Quote a string for an MLflow filter (its grammar has no escapes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search for a value holding both quote characters: {value!r}")


def _tag_filter(tags: Mapping[str, Any]) -> str:
    return " and ".join(f"tags.`{k}` = {_quote(str(v))}" for k, v in tags.items())


def find_run(
    tracking_uri: str, experiment: str, tags: dict, status: str | None = None
) -> str | None:
    """Id of the newest active run in ``experiment`` carrying all ``tags`` (optionally with
    the given status, e.g. ``"FINISHED"``), or None. Use it to reuse or skip a candidate run
    keyed by ``lensllm.probe_key``."""
    if not tags:
        raise ValueError("find_run needs at least one tag to match, e.g. {'lensllm.probe_key': k}")
    client = get_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = _tag_filter(tags)
    if status:
        query += f" and attributes.status = {_quote(status)}"
    runs = client.search_runs(
        [found.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0].info.run_id if runs else None


def get_run_summary(tracking_uri: str, run_id: str) -> dict:
    """Plain summary of a run: status, experiment, parent, params, tags, latest metrics."""
    run = get_client(tracking_uri).get_run(run_id)
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "parent_run_id": run.data.tags.get(_PARENT_RUN_TAG),
        "artifact_uri": run.info.artifact_uri,
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
    }


# --------------------------------------------------------------------------------------------
# Selection runs: one parent per selection, one nested run per candidate
# --------------------------------------------------------------------------------------------
def start_selection_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: dict,
    params: dict,
    config_yaml_text: str,
) -> str:
    """Start the parent run of a selection and return its id.

    ``tags`` should carry ``lensllm.git_commit``, ``lensllm.config_hash`` and
    ``lensllm.data_fingerprint`` (the constants ``TAG_*`` of this module); they are copied onto
    every candidate run. The resolved config is logged as ``config/resolved.yaml``.
    """
    client, run_id = _create_run(
        tracking_uri, experiment, run_name, {**(tags or {}), TAG_RUN_KIND: "selection"}
    )
    _log_batch(client, run_id, params=_params(params))
    client.log_text(run_id, config_yaml_text, "config/resolved.yaml")
    return run_id


def open_selection_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: dict,
    params: dict,
    config_yaml_text: str,
) -> tuple[str, bool]:
    """The parent run of a selection: an unfinished run with the same
    ``lensllm.selection_key`` (an attempt that crashed or was killed) is resumed, so a re-run
    after a crash adds no second parent run; otherwise a new run is started.

    Returns ``(run_id, resumed)``. A resumed run is set back to RUNNING and its
    ``lensllm.resumed`` tag counts the resumptions.
    """
    key = tags.get(TAG_SELECTION_KEY)
    client = get_client(tracking_uri)
    found = client.get_experiment_by_name(experiment) if key else None
    if found is not None:
        query = _tag_filter({TAG_SELECTION_KEY: key, TAG_RUN_KIND: "selection"})
        runs = client.search_runs(
            [found.experiment_id],
            query + " and attributes.status != 'FINISHED'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if runs:
            run = runs[0]
            client.update_run(run.info.run_id, status="RUNNING")
            resumed = int(run.data.tags.get(TAG_RESUMED, "0")) + 1
            client.set_tag(run.info.run_id, TAG_RESUMED, str(resumed))
            return run.info.run_id, True
    return start_selection_run(
        tracking_uri, experiment, run_name, tags, params, config_yaml_text
    ), False


def _dataset_input(
    name: str, fingerprint: str, size: int, source: str, context: str
) -> DatasetInput:
    # The SQL store's digest column is 36 characters: keep the full fingerprint in a tag.
    dataset = Dataset(
        name=name,
        digest=str(fingerprint)[:36],
        source_type="local",
        source=json.dumps({"uri": source}),
        profile=json.dumps({"num_rows": int(size)}),
    )
    tags = [
        InputTag("mlflow.data.context", context),
        InputTag("lensllm.fingerprint", str(fingerprint)),
        InputTag("lensllm.size", str(int(size))),
    ]
    return DatasetInput(dataset=dataset, tags=tags)


_inputs_lock = threading.Lock()


def _log_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    """``log_inputs`` that survives concurrent runs logging the same dataset.

    MLflow's SQL store checks whether a dataset exists in the experiment and then inserts it:
    two runs logging the same subset at once hit a UNIQUE constraint. A lock serialises the
    threads of this process; one retry (the dataset then exists and is reused) covers other
    processes.
    """
    from mlflow.exceptions import MlflowException

    with _inputs_lock:
        try:
            client.log_inputs(run_id, datasets=inputs)
        except MlflowException as err:
            if "UNIQUE constraint" not in str(err) and "duplicate key" not in str(err):
                raise
            client.log_inputs(run_id, datasets=inputs)


def log_probe(tracking_uri: str, run_id: str, probe: dict) -> None:
    """Log one probe (one candidate at one subset size) to a candidate run.

    ``probe`` keys: ``subset_size`` (int, required, used as the metric step); every other
    numeric value (``test_loss``, ``test_bits_per_byte``, ``wall_time_s``, ``flops``,
    ``tokens_seen`` ...) becomes a metric at that step; with ``subset_fingerprint`` (and a
    size > 0) the training subset is logged as a dataset input (``dataset_name`` and
    ``dataset_source`` optional); ``test_fingerprint`` / ``test_size`` log the test split.
    """
    size = probe.get("subset_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"probe needs an int 'subset_size' >= 0, got {size!r} in {probe!r}")
    now = get_current_time_millis()
    metrics = [
        _metric(k, v, size, now)
        for k, v in probe.items()
        if k != "subset_size" and isinstance(v, int | float) and not isinstance(v, bool)
    ]
    inputs = []
    dataset_name = str(probe.get("dataset_name", "train"))
    source = str(probe.get("dataset_source", "lensllm://subset"))
    if probe.get("subset_fingerprint") and size > 0:
        fingerprint = str(probe["subset_fingerprint"])
        inputs.append(
            _dataset_input(f"{dataset_name}-{size}", fingerprint, size, source, "training")
        )
    if probe.get("test_fingerprint"):
        test_size = int(probe.get("test_size", 0))
        inputs.append(
            _dataset_input(
                f"{dataset_name}-test", probe["test_fingerprint"], test_size, source, "testing"
            )
        )
    client = get_client(tracking_uri)
    _log_batch(client, run_id, metrics=metrics)
    if inputs:
        _log_inputs(client, run_id, inputs)
    text_values = {k: v for k, v in probe.items() if isinstance(v, str) and k == "device"}
    if text_values:
        _log_batch(client, run_id, tags=_tags({f"lensllm.{k}": v for k, v in text_values.items()}))


def log_candidate(
    tracking_uri: str,
    parent_run_id: str,
    candidate: str,
    probes: list[dict],
    prediction: dict,
    params: dict,
    *,
    probe_key: str | None = None,
    tags: dict | None = None,
    extra_metrics: list[tuple[str, float, int]] | None = None,
    extra_json: dict[str, Any] | None = None,
    finish: bool = True,
) -> str:
    """Create the nested run of one candidate under a selection run; return its id.

    Every probe is logged with :func:`log_probe` (metrics with ``step = subset size``, dataset
    inputs). Numeric entries of ``prediction`` become ``prediction.<key>`` metrics (step =
    ``prediction['target_size']`` when given) and ``predicted_loss`` is also logged as
    ``test_loss_predicted`` at the target size, next to the measured curve; the whole
    prediction is logged as ``prediction.json``. ``lensllm.*`` tags of the parent (git commit,
    config hash, data fingerprint) are copied; ``probe_key`` is stored as
    ``lensllm.probe_key`` so :func:`find_run` can find the run on a re-run.
    ``extra_metrics`` (key, value, step) and ``extra_json`` (artifact file -> data) are logged
    before the run ends.

    Idempotent under a resumed parent (see :func:`open_selection_run`): a finished run of the
    same candidate is kept and its id returned; an unfinished one (cut off by a crash) is
    deleted and logged again in full, so each candidate has exactly one run.
    """
    client = get_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id).name
    earlier = client.search_runs(
        [parent.info.experiment_id],
        _tag_filter({_PARENT_RUN_TAG: parent_run_id, TAG_CANDIDATE: candidate}),
    )
    for run in earlier:
        if run.info.status == "FINISHED":
            return run.info.run_id
        client.delete_run(run.info.run_id)
    run_tags = {
        k: v for k, v in parent.data.tags.items() if k.startswith("lensllm.") and k != TAG_RUN_KIND
    }
    run_tags.update(filter_secrets(tags))
    run_tags.update({TAG_CANDIDATE: candidate, TAG_RUN_KIND: "candidate"})
    if probe_key:
        run_tags[TAG_PROBE_KEY] = probe_key
    _, run_id = _create_run(tracking_uri, experiment, candidate, run_tags, parent_run_id)
    try:
        _log_batch(client, run_id, params=_params(params))
        for probe in sorted(probes, key=lambda p: p.get("subset_size", -1)):
            log_probe(tracking_uri, run_id, probe)
        _log_prediction(client, run_id, prediction)
        now = get_current_time_millis()
        _log_batch(
            client, run_id, metrics=[_metric(k, v, t, now) for k, v, t in extra_metrics or []]
        )
        for artifact_file, data in (extra_json or {}).items():
            client.log_dict(run_id, data, artifact_file)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    if finish:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _log_prediction(client: MlflowClient, run_id: str, prediction: dict) -> None:
    if not prediction:
        return
    target = prediction.get("target_size", 0)
    step = target if isinstance(target, int) and not isinstance(target, bool) else 0
    now = get_current_time_millis()
    metrics = [
        _metric(f"prediction.{k}", v, step, now)
        for k, v in prediction.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    loss = prediction.get("predicted_loss")
    if isinstance(loss, int | float) and not isinstance(loss, bool):
        metrics.append(_metric("test_loss_predicted", loss, step, now))
    _log_batch(client, run_id, metrics=metrics)
    client.log_dict(run_id, prediction, "prediction.json")


# --------------------------------------------------------------------------------------------
# Model logging (transformers flavour)
# --------------------------------------------------------------------------------------------
_fluent_lock = threading.Lock()
_URI_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def _fluent_uris(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``tracking_uri`` (tracking and registry) for one call.

    MLflow's own ``_use_tracking_uri`` restores by *unsetting* ``MLFLOW_TRACKING_URI`` when no
    URI was set programmatically, which would wipe a user's environment variable; this restores
    the module globals and both environment variables exactly. Serialised by a lock because
    the fluent URIs are process-global.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _fluent_lock:
        saved_env = {k: os.environ.get(k) for k in _URI_ENV_VARS}
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        try:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
            yield
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _pinned(package: str) -> str:
    from importlib.metadata import version

    # Drop a local build suffix such as "+cpu": pip cannot resolve it from PyPI.
    return f"{package}=={version(package).split('+')[0]}"


def default_pip_requirements() -> list[str]:
    """Pinned requirements to serve a transformers text-generation model."""
    packages = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "accelerate")
    return [_pinned(p) for p in packages]


def log_transformers_model(
    tracking_uri: str,
    run_id: str,
    model_dir: str,
    *,
    max_new_tokens: int = 32,
    artifact_name: str = "model",
    pip_requirements: list[str] | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Log a saved (merged) transformers causal LM folder to a run with the transformers flavour.

    ``model_dir`` must hold safetensors weights and a tokenizer (``save_pretrained`` output;
    merge LoRA adapters with ``merge_and_unload()`` first: logging a PEFT model whose base is a
    local folder reloads with re-initialised base weights). Returns
    ``{"model_uri", "model_id", "artifact_name"}``.

    ``mlflow.transformers.log_model`` only exists in fluent form and reads the process-global
    tracking URI and active experiment, so the LoggedModel is created here with the client (in
    the run's experiment) and the call runs under a lock with the tracking URI switched.
    """
    folder = Path(model_dir)
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{str(folder)!r} holds no *.safetensors weights; save the merged model with "
            "model.save_pretrained(dir) and tokenizer.save_pretrained(dir)"
        )
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    import mlflow.transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    client = get_client(tracking_uri)
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id, name=artifact_name, source_run_id=run_id
    )
    with _fluent_uris(tracking_uri):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=artifact_name,
            task="text-generation",
            pip_requirements=pip_requirements or default_pip_requirements(),
            model_config={"max_new_tokens": max_new_tokens},
            run_id=run_id,
            model_id=logged.model_id,
        )
    return {
        "model_uri": info.model_uri,
        "model_id": logged.model_id,
        "artifact_name": artifact_name,
    }


def load_transformers_components(tracking_uri: str, model_uri: str) -> dict:
    """Load a logged or registered transformers model as ``{"model", "tokenizer", ...}``
    (e.g. ``models:/<name>@champion``)."""
    import mlflow.transformers

    with _fluent_uris(tracking_uri):
        return mlflow.transformers.load_model(model_uri, return_type="components")


# --------------------------------------------------------------------------------------------
# Model registry: versions, aliases, promotion, rollback
# --------------------------------------------------------------------------------------------
TAG_SELECTION_KEY = "lensllm.selection_key"
TAG_TASK_KEY = "lensllm.task_key"
TAG_SELECTOR = "lensllm.selector"
TAG_PREDICTED_LOSS = "lensllm.predicted_loss"
TAG_INTERVAL_LOW = "lensllm.interval_low"
TAG_INTERVAL_HIGH = "lensllm.interval_high"
TAG_PREVIOUS_CHAMPION = "lensllm.previous_champion"
TAG_GATE_REASON = "lensllm.gate_reason"
TAG_ROLLED_BACK = "lensllm.rolled_back"
ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"


def find_model_version(tracking_uri: str, registered_name: str, tags: dict) -> str | None:
    """The newest version of ``registered_name`` carrying all ``tags``, or None."""
    if not tags:
        raise ValueError("find_model_version needs at least one tag, e.g. a selection key")
    client = get_client(tracking_uri)
    query = f"name = {_quote(registered_name)} and {_tag_filter(tags)}"
    versions = client.search_model_versions(query)
    if not versions:
        return None
    return str(max(int(v.version) for v in versions))


def register_model_version(
    tracking_uri: str,
    registered_name: str,
    *,
    model_uri: str,
    run_id: str,
    model_id: str | None,
    tags: dict,
    description: str,
) -> str:
    """Create a new version of ``registered_name`` (created when missing) from a logged model,
    tag it, set alias ``candidate`` on it and return the version number as a string."""
    from mlflow.exceptions import MlflowException

    client = get_client(tracking_uri)
    try:
        client.create_registered_model(
            registered_name,
            description="LensLLM: fine-tuned model selected by scaling-law prediction",
        )
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = model_uri
    if model_id:
        # MLflow's SQL registry store resolves a ``models:/<model_id>`` source with a *global*
        # MlflowClient() (ignoring this client's URI): pass the artifact location instead.
        source = client.get_logged_model(model_id).artifact_location
    version = client.create_model_version(
        registered_name,
        source=source,
        run_id=run_id,
        tags={k: str(v) for k, v in filter_secrets(tags).items()},
        description=description,
        model_id=model_id,
    )
    client.set_registered_model_alias(registered_name, ALIAS_CANDIDATE, version.version)
    return str(version.version)


def get_model_version_info(tracking_uri: str, registered_name: str, version: str) -> dict:
    """Plain view of a model version: version, aliases, tags, description, source, run id."""
    mv = get_client(tracking_uri).get_model_version(registered_name, str(version))
    return {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": sorted(mv.aliases),
        "tags": dict(mv.tags),
        "description": mv.description,
        "source": mv.source,
        "run_id": mv.run_id,
    }


def alias_version(tracking_uri: str, registered_name: str, alias: str) -> str | None:
    """Version that ``alias`` points to, or None when the alias (or model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        mv = get_client(tracking_uri).get_model_version_by_alias(registered_name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return str(mv.version)


def _float_tag(tags: Mapping[str, str], key: str) -> float:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return math.nan


def _contender(tracking_uri: str, registered_name: str, version: str) -> Contender:
    tags = get_client(tracking_uri).get_model_version(registered_name, version).tags
    return Contender(
        version=str(version),
        task_key=tags.get(TAG_TASK_KEY, ""),
        predicted_loss=_float_tag(tags, TAG_PREDICTED_LOSS),
        interval_low=_float_tag(tags, TAG_INTERVAL_LOW),
        interval_high=_float_tag(tags, TAG_INTERVAL_HIGH),
        rolled_back=tags.get(TAG_ROLLED_BACK) == "true",
    )


def promote_if_better(
    tracking_uri: str,
    registered_name: str,
    version: str,
    *,
    margin: float,
    require_disjoint_intervals: bool = False,
    lock_dir: str | None = None,
) -> dict:
    """Apply the promotion gate (``tasks.registry.decide_promotion``) to ``version`` against
    the current ``champion`` and move the alias only when it passes.

    The gate reads the champion, then moves it: with ``lock_dir`` that read-then-write holds
    a lock (``tasks.locks``) per tracking URI and model name, so two selections finishing at
    once cannot both promote against the same old champion.

    The version's tags must hold ``lensllm.task_key`` and ``lensllm.predicted_loss`` (and the
    interval). On promotion the previous champion is recorded in the new champion's
    ``lensllm.previous_champion`` tag (empty when there was none) for :func:`rollback`.
    Returns the decision as a dict (``promote``, ``reason`` ...).
    """
    if lock_dir is None:
        return _promote(
            tracking_uri, registered_name, str(version), margin, require_disjoint_intervals
        )
    path = lock_path(lock_dir, "registry", _display_uri(tracking_uri), registered_name)
    with held(path, f"the promotion gate of {registered_name}", logger):
        return _promote(
            tracking_uri, registered_name, str(version), margin, require_disjoint_intervals
        )


def _promote(
    tracking_uri: str,
    registered_name: str,
    version: str,
    margin: float,
    require_disjoint_intervals: bool,
) -> dict:
    client = get_client(tracking_uri)
    challenger = _contender(tracking_uri, registered_name, str(version))
    champion_version = alias_version(tracking_uri, registered_name, ALIAS_CHAMPION)
    champion = (
        _contender(tracking_uri, registered_name, champion_version) if champion_version else None
    )
    decision = decide_promotion(
        challenger,
        champion,
        margin=margin,
        require_disjoint_intervals=require_disjoint_intervals,
    )
    client.set_model_version_tag(registered_name, str(version), TAG_GATE_REASON, decision.reason)
    if decision.promote:
        client.set_model_version_tag(
            registered_name, str(version), TAG_PREVIOUS_CHAMPION, champion_version or ""
        )
        client.set_registered_model_alias(registered_name, ALIAS_CHAMPION, str(version))
    return decision.to_dict()


def rollback(tracking_uri: str, registered_name: str) -> dict:
    """Move ``champion`` back to the version that held it before the current champion.

    Returns ``{"champion": <restored version>, "rolled_back_from": <previous champion>}``.

    Raises
    ------
    ValueError
        When there is no champion or the champion has no recorded predecessor.
    """
    client = get_client(tracking_uri)
    current = alias_version(tracking_uri, registered_name, ALIAS_CHAMPION)
    if current is None:
        raise ValueError(f"registered model {registered_name!r} has no champion to roll back")
    previous = client.get_model_version(registered_name, current).tags.get(TAG_PREVIOUS_CHAMPION)
    if not previous:
        raise ValueError(
            f"champion v{current} of {registered_name!r} has no previous champion recorded "
            f"(tag {TAG_PREVIOUS_CHAMPION}); set the alias by hand with "
            "MlflowClient.set_registered_model_alias if a rollback is still needed"
        )
    client.set_registered_model_alias(registered_name, ALIAS_CHAMPION, previous)
    client.set_model_version_tag(registered_name, current, TAG_ROLLED_BACK, "true")
    return {"champion": previous, "rolled_back_from": current}


def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    *,
    tags: dict | None = None,
    params: dict | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Start a run (nested under ``parent_run_id`` in the parent's experiment when given)."""
    if parent_run_id:
        client = get_client(tracking_uri)
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        experiment = client.get_experiment(experiment_id).name
    client, run_id = _create_run(tracking_uri, experiment, run_name, tags, parent_run_id)
    _log_batch(client, run_id, params=_params(params))
    return run_id


# --------------------------------------------------------------------------------------------
# Prefect tasks: thin wrappers (side effects, so never cached)
# --------------------------------------------------------------------------------------------
start_selection_run_task = task(name="mlflow-start-selection-run", cache_policy=NO_CACHE)(
    start_selection_run
)
log_candidate_task = task(name="mlflow-log-candidate", cache_policy=NO_CACHE)(log_candidate)
log_artifact_file_task = task(name="mlflow-log-artifact", cache_policy=NO_CACHE)(log_artifact_file)
log_table_task = task(name="mlflow-log-table", cache_policy=NO_CACHE)(log_table)
end_run_task = task(name="mlflow-end-run", cache_policy=NO_CACHE)(end_run)
find_run_task = task(name="mlflow-find-run", cache_policy=NO_CACHE)(find_run)
start_run_task = task(name="mlflow-start-run", cache_policy=NO_CACHE)(start_run)
log_model_task = task(name="mlflow-log-transformers-model", cache_policy=NO_CACHE)(
    log_transformers_model
)
find_model_version_task = task(name="registry-find-version", cache_policy=NO_CACHE)(
    find_model_version
)
register_model_version_task = task(name="registry-register-version", cache_policy=NO_CACHE)(
    register_model_version
)
promote_task = task(name="registry-promotion-gate", cache_policy=NO_CACHE)(promote_if_better)
model_version_info_task = task(name="registry-version-info", cache_policy=NO_CACHE)(
    get_model_version_info
)
rollback_task = task(name="registry-rollback", cache_policy=NO_CACHE)(rollback)
