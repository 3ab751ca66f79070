"""``Tracker``: one MLflow tracking (and registry) URI and the generic operations on runs.

Every method talks to MLflow through an ``MlflowClient`` bound to the tracker's URI, so nothing
depends on ``MLFLOW_TRACKING_URI`` or on the fluent API's process-global active run; methods
are re-entrant by run id and safe to call from several threads (SQLite backend included).
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.utils.time import get_current_time_millis

from tasks.records.errors import ConfigError, TrackingUnavailableError
from tasks.tracking import tags as T
from tasks.tracking.secrets import display_uri, filter_secrets

_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_VALUE_CHARS = 6000
_experiment_lock = threading.Lock()
_inputs_lock = threading.Lock()
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


def default_tracking_uri(root: str | os.PathLike = ".lensllm") -> str:
    """The project's local tracking URI: ``sqlite:///<abs root>/mlflow.db``.

    Artifacts of experiments created by a :class:`Tracker` go under ``<root>/mlartifacts``.
    The folder is created if needed.
    """
    base = Path(root).expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'mlflow.db'}"


def artifact_root_for(tracking_uri: str) -> str | None:
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


def metric(key: str, value: Any, step: int, timestamp: int | None = None) -> Metric:
    """An MLflow metric; ``step`` is the subset size (or another int axis)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}")
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"metric {key!r}: step must be an int (subset size), got {step!r}")
    return Metric(key, float(value), timestamp or get_current_time_millis(), step)


def quote(value: str) -> str:
    """Quote a string for an MLflow filter (its grammar has no escapes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search for a value holding both quote characters: {value!r}")


def tag_filter(tags: Mapping[str, Any]) -> str:
    """An MLflow search filter matching every ``tags`` entry."""
    return " and ".join(f"tags.`{k}` = {quote(str(v))}" for k, v in tags.items())


def check_store_kind(uri: str) -> None:
    """MLflow 3 refuses its file store (``file:///...`` or a bare folder) unless
    ``MLFLOW_ALLOW_FILE_STORE=true``: say so before any work rather than after it.

    Raises
    ------
    ConfigError
        ``uri`` names a file store and the opt-out is not set.
    """
    opted_in = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() == "true"
    if urlparse(uri).scheme not in ("", "file") or opted_in:
        return
    raise ConfigError(
        f"tracking URI {display_uri(uri)!r} is an MLflow file store, which MLflow 3 no longer "
        "opens: use a database such as 'sqlite:///path/mlflow.db' (the default is "
        ".lensllm/mlflow.db), a server such as 'http://127.0.0.1:5000', or set "
        "MLFLOW_ALLOW_FILE_STORE=true to use the file store anyway"
    )


class Tracker:
    """An MLflow tracking server or store (its registry too), and what LensLLM does with runs.

    Parameters
    ----------
    uri : str
        ``sqlite:///path/mlflow.db``, ``http://127.0.0.1:5000``, ...; use
        :meth:`Tracker.local` for the project's own store.
    """

    def __init__(self, uri: str) -> None:
        if not uri or not isinstance(uri, str):
            raise ValueError(
                "the tracking URI must be a non-empty string such as 'sqlite:///path/mlflow.db' "
                "or 'http://127.0.0.1:5000'; use Tracker.local() for the local store"
            )
        check_store_kind(uri)
        self.uri = uri

    @functools.cached_property
    def client(self) -> MlflowClient:
        """The MLflow client of this URI (created on first use: a new SQLite store is created
        only when something is logged to it, with every artifact, the default experiment's
        included, under ``mlartifacts`` next to the database rather than ``./mlruns``)."""
        self._create_local_store()
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _create_local_store(self) -> None:
        root = artifact_root_for(self.uri)
        if not self.uri.startswith("sqlite:///") or root is None:
            return
        db = Path(unquote(self.uri[len("sqlite:///") :]))
        if db.exists():
            return
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        db.parent.mkdir(parents=True, exist_ok=True)
        SqlAlchemyStore(self.uri, root)  # creates the schema and the "Default" experiment

    @classmethod
    def local(cls, root: str | os.PathLike = ".lensllm") -> Tracker:
        """The project's local SQLite store under ``root``."""
        return cls(default_tracking_uri(root))

    @classmethod
    def resolve(cls, configured: str | None, cache_dir: str | os.PathLike) -> Tracker:
        """Config > the environment (a worker of the server stack sets it) > the local store."""
        uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
        return cls(uri) if uri else cls.local(cache_dir)

    def __repr__(self) -> str:
        return f"Tracker({self.display_uri!r})"

    @property
    def display_uri(self) -> str:
        """The URI without credentials (for messages)."""
        return display_uri(self.uri)

    # -- reachability -----------------------------------------------------------------------
    def unreachable_error(self, timeout: float = 5.0) -> TrackingUnavailableError | None:
        """A :class:`TrackingUnavailableError` when the URI is an HTTP(S) server that does not
        answer ``/health`` (or whose artifact store does not), else None (local stores are
        always reachable)."""
        import requests

        if urlparse(self.uri).scheme not in ("http", "https"):
            return None
        base = self.uri.rstrip("/")
        try:
            response = requests.get(base + "/health", timeout=timeout)
            why = None if response.ok else f"HTTP {response.status_code}"
        except requests.RequestException as err:
            why = type(err).__name__
        if why is None:
            return self._artifact_store_error(base, timeout)
        return TrackingUnavailableError(
            f"MLflow tracking server {self.display_uri} is unreachable ({why}). Start it "
            "(`lensllm stack up`) or fix tracking.uri / MLFLOW_TRACKING_URI, then run the same "
            "command again: finished probes stay in the local cache, nothing is recomputed, and "
            "they are logged then."
        )

    def _artifact_store_error(self, base: str, timeout: float) -> TrackingUnavailableError | None:
        """A server that proxies artifacts (``--artifacts-destination``, as on the stack) is
        usable only when its artifact store answers: list the store's root once. A server that
        does not proxy artifacts answers 404 here and is not checked further."""
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
            f"MLflow tracking server {display_uri(base)} answers, but its artifact store does "
            f"not ({why}): check the S3 server behind it (`lensllm stack status`), then run the "
            "same command again: finished probes stay in the local cache, nothing is "
            "recomputed, and they are logged then."
        )

    def check_reachable(self, timeout: float = 5.0) -> None:
        """Raise :class:`TrackingUnavailableError` when the tracking server does not answer."""
        error = self.unreachable_error(timeout)
        if error is not None:
            raise error

    # -- experiments and runs ---------------------------------------------------------------
    def experiment_id(self, experiment: str) -> str:
        """The id of ``experiment``, created (artifacts under ``mlartifacts`` next to a SQLite
        database) when it does not exist. The experiment is marked as model training
        (``mlflow.experimentKind``), so the MLflow UI opens it on its training runs, not in
        GenAI mode."""
        if not experiment:
            raise ValueError("experiment must be a non-empty experiment name")
        with _experiment_lock:  # two threads creating the same experiment would race
            found = self.client.get_experiment_by_name(experiment)
            if found is not None:
                if T.EXPERIMENT_KIND not in found.tags:  # made before the kind was set
                    self.client.set_experiment_tag(
                        found.experiment_id, T.EXPERIMENT_KIND, T.EXPERIMENT_KIND_TRAINING
                    )
                if found.lifecycle_stage == "deleted":
                    raise ValueError(
                        f"MLflow experiment {experiment!r} is deleted; restore it (`mlflow "
                        f"experiments restore --experiment-id {found.experiment_id}`) or choose "
                        "another experiment name"
                    )
                return found.experiment_id
            return self.client.create_experiment(
                experiment,
                artifact_location=artifact_root_for(self.uri),
                tags={T.EXPERIMENT_KIND: T.EXPERIMENT_KIND_TRAINING},
            )

    def create_run(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        *,
        parent_run_id: str | None = None,
        start_time: int | None = None,
    ) -> str:
        """Create a run (nested under ``parent_run_id`` in the parent's experiment when given);
        ``start_time`` in epoch milliseconds (default: now)."""
        if parent_run_id:
            experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        else:
            experiment_id = self.experiment_id(experiment)
        run_tags = filter_secrets(tags)
        run_tags[T.RUN_NAME] = run_name
        if parent_run_id:
            run_tags[T.PARENT_RUN] = parent_run_id
        run = self.client.create_run(
            experiment_id,
            run_name=run_name,
            tags={k: str(v) for k, v in run_tags.items()},
            start_time=start_time,
        )
        return run.info.run_id

    def log(
        self,
        run_id: str,
        *,
        metrics: Iterable[tuple[str, float, int]] = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """Log ``(key, value, step)`` metrics, params and tags (credentials filtered), in
        batches that respect MLflow's per-request limits."""
        now = get_current_time_millis()
        rows = [metric(str(k), v, s, now) for k, v, s in metrics]
        param_rows = _params(params)
        for i in range(0, len(param_rows), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=param_rows[i : i + _MAX_PARAMS_PER_BATCH])
        tag_rows = [RunTag(k, str(v)) for k, v in filter_secrets(tags).items()]
        if tag_rows:
            self.client.log_batch(run_id, tags=tag_rows)
        for i in range(0, len(rows), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=rows[i : i + _MAX_METRICS_PER_BATCH])

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> str:
        """Log one local file under ``artifact_path`` of the run; return its artifact path."""
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"artifact file {str(file)!r} does not exist or is not a file")
        self.client.log_artifact(run_id, str(file), artifact_path)
        return f"{artifact_path}/{file.name}" if artifact_path else file.name

    def log_artifacts(self, run_id: str, folder: str) -> None:
        """Log every file below ``folder`` (relative paths kept)."""
        self.client.log_artifacts(run_id, folder)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> str:
        self.client.log_text(run_id, text, artifact_file)
        return artifact_file

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> str:
        self.client.log_dict(run_id, data, artifact_file)
        return artifact_file

    def load_json(self, run_id: str, artifact_file: str) -> Any:
        """A JSON artifact of a run, parsed."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, artifact_file, tmp)
            return json.loads(Path(path).read_text())

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> str:
        """Log rows as a table the MLflow UI shows as one (``artifact_file`` ends in .json)."""
        if not artifact_file.endswith(".json"):
            raise ValueError(f"artifact_file {artifact_file!r} must end with '.json' for a table")
        import pandas as pd

        self.client.log_table(run_id, pd.DataFrame(rows), artifact_file)
        return artifact_file

    def link_model_version(self, model_id: str, name: str, version: str) -> None:
        """Record on a logged model that it is registered as ``name`` version ``version``.

        The MLflow UI's runs table shows a run's registered versions from this tag
        (``mlflow.modelVersions`` on the run's logged models). MLflow's server sets it when a
        version is created through it, but ``MlflowClient.create_model_version`` on a local
        store (``sqlite:///``, what ``lensllm ui`` serves) does not: without it the table shows
        the bare logged model. Idempotent.
        """
        entry = {"name": name, "version": int(version)}
        tags = self.client.get_logged_model(model_id).tags
        linked = json.loads(tags.get(T.MODEL_VERSIONS, "[]"))
        if entry not in linked:
            self.client.set_logged_model_tags(
                model_id, {T.MODEL_VERSIONS: json.dumps([*linked, entry])}
            )

    def log_inputs(self, run_id: str, inputs: list[DatasetInput]) -> None:
        """``log_inputs`` that survives concurrent runs logging the same dataset.

        MLflow's SQL store checks whether a dataset exists in the experiment and then inserts
        it: two runs logging the same subset at once hit a UNIQUE constraint. A lock serialises
        the threads of this process; one retry (the dataset then exists) covers other processes.
        """
        from mlflow.exceptions import MlflowException

        with _inputs_lock:
            try:
                self.client.log_inputs(run_id, datasets=inputs)
            except MlflowException as err:
                if "UNIQUE constraint" not in str(err) and "duplicate key" not in str(err):
                    raise
                self.client.log_inputs(run_id, datasets=inputs)

    def end_run(self, run_id: str, status: str = "FINISHED", end_time: int | None = None) -> None:
        """Terminate a run with status FINISHED, FAILED or KILLED (``end_time`` in epoch ms)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        self.client.set_terminated(run_id, status, end_time=end_time)

    def find_run(self, experiment: str, tags: dict, status: str | None = None) -> str | None:
        """Id of the newest active run in ``experiment`` carrying all ``tags`` (optionally with
        the given status, e.g. ``"FINISHED"``), or None."""
        if not tags:
            raise ValueError("find_run needs at least one tag to match")
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return None
        query = tag_filter(tags)
        if status:
            query += f" and attributes.status = {quote(status)}"
        runs = self.client.search_runs(
            [found.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"]
        )
        return runs[0].info.run_id if runs else None

    def run_summary(self, run_id: str) -> dict:
        """Plain summary of a run: status, experiment, parent, params, tags, latest metrics."""
        run = self.client.get_run(run_id)
        return {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "parent_run_id": run.data.tags.get(T.PARENT_RUN),
            "artifact_uri": run.info.artifact_uri,
            "params": dict(run.data.params),
            "tags": dict(run.data.tags),
            "metrics": dict(run.data.metrics),
        }


def _params(params: Mapping[str, Any] | None) -> list[Param]:
    out = []
    for key, value in filter_secrets(params).items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out.append(Param(key, text[:_MAX_PARAM_VALUE_CHARS]))
    return out
