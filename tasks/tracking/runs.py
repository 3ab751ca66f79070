"""Selection runs (one parent per selection, one nested run per candidate, resumable after a
crash), probe logging with dataset inputs, and the replay benchmark's run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag

from tasks.records.schema import PreparedData, ProbeResult
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker, tag_filter
from tasks.tracking.secrets import filter_secrets


def open_selection_run(
    tracker: Tracker,
    experiment: str,
    run_name: str,
    tags: dict,
    params: dict,
    config_yaml: str,
    *,
    start_time: int | None = None,
) -> tuple[str, bool]:
    """The parent run of a selection: an unfinished run with the same selection key (an
    attempt that crashed or was killed) is resumed, so a re-run after a crash adds no second
    parent run; otherwise a new run is started at ``start_time`` (epoch ms) with the resolved
    config logged as ``config/resolved.yaml``.

    Returns ``(run_id, resumed)``. A resumed run is set back to RUNNING and its
    ``lensllm.resumed`` tag counts the resumptions.
    """
    key = tags.get(T.SELECTION_KEY)
    found = tracker.client.get_experiment_by_name(experiment) if key else None
    if found is not None:
        query = tag_filter({T.SELECTION_KEY: key, T.RUN_KIND: "selection"})
        runs = tracker.client.search_runs(
            [found.experiment_id],
            query + " and attributes.status != 'FINISHED'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if runs:
            run = runs[0]
            tracker.client.update_run(run.info.run_id, status="RUNNING")
            resumed = int(run.data.tags.get(T.RESUMED, "0")) + 1
            tracker.client.set_tag(run.info.run_id, T.RESUMED, str(resumed))
            return run.info.run_id, True
    run_id = tracker.create_run(
        experiment, run_name, {**tags, T.RUN_KIND: "selection"}, start_time=start_time
    )
    tracker.log(run_id, params=params)
    tracker.log_text(run_id, config_yaml, "config/resolved.yaml")
    return run_id, False


def finished_selection_run(tracker: Tracker, experiment: str, selection_key: str) -> str | None:
    """The finished parent run that already holds this selection, or None."""
    return tracker.find_run(
        experiment, {T.SELECTION_KEY: selection_key, T.RUN_KIND: "selection"}, "FINISHED"
    )


def dataset_input(
    name: str, fingerprint: str, size: int, source: str, context: str
) -> DatasetInput:
    """An MLflow dataset input for a subset (``context``: training, testing)."""
    # The SQL store's digest column is 36 characters: keep the full fingerprint in a tag.
    dataset = Dataset(
        name=name,
        digest=str(fingerprint)[:36],
        source_type="local",
        source=json.dumps({"uri": source}),
        profile=json.dumps({"num_rows": int(size)}),
    )
    tags = [
        InputTag(T.INPUT_CONTEXT, context),
        InputTag(T.INPUT_FINGERPRINT, str(fingerprint)),
        InputTag(T.INPUT_SIZE, str(int(size))),
    ]
    return DatasetInput(dataset=dataset, tags=tags)


def probe_inputs(probe: ProbeResult, data: PreparedData) -> list[DatasetInput]:
    """The probe's training subset (when it trained) and the test split, as dataset inputs."""
    inputs = []
    if probe.train_fingerprint and probe.size > 0:
        inputs.append(
            dataset_input(
                f"{data.dataset_name}-{probe.size}",
                probe.train_fingerprint,
                probe.size,
                data.source,
                "training",
            )
        )
    if probe.test_fingerprint:
        inputs.append(
            dataset_input(
                f"{data.dataset_name}-test",
                probe.test_fingerprint,
                probe.n_test,
                data.source,
                "testing",
            )
        )
    return inputs


def log_probe(tracker: Tracker, run_id: str, probe: ProbeResult, data: PreparedData) -> None:
    """Log one probe to a candidate run: every numeric result as a metric at ``step = subset
    size``, the subset and the test split as dataset inputs, the device and precision as tags."""
    tracker.log(run_id, metrics=[(k, v, probe.size) for k, v in probe.metrics().items()])
    tracker.log_inputs(run_id, probe_inputs(probe, data))
    tracker.log(run_id, tags={T.DEVICE: probe.device, T.PRECISION: probe.precision})


def log_candidate(
    tracker: Tracker,
    parent_run_id: str,
    candidate: str,
    probes: list[ProbeResult],
    data: PreparedData,
    *,
    prediction: dict,
    params: dict,
    tags: dict | None = None,
    extra_metrics: list[tuple[str, float, int]] | None = None,
    extra_json: dict[str, Any] | None = None,
    extra_tables: dict[str, list[dict]] | None = None,
) -> str:
    """Create the nested run of one candidate under a selection run; return its id.

    Every probe is logged (:func:`log_probe`). Numeric entries of ``prediction`` become
    ``prediction.<key>`` metrics at step ``prediction['target_size']`` and ``predicted_loss``
    also ``test_loss_predicted`` there, next to the measured curve; the whole prediction is
    logged as ``prediction.json``. ``extra_json`` and ``extra_tables`` (artifact file ->
    payload, or rows of a table the UI renders) are logged too. The parent's ``lensllm.*``
    tags are copied.

    Idempotent under a resumed parent (:func:`open_selection_run`): a finished run of the same
    candidate is kept and its id returned; an unfinished one (cut off by a crash) is deleted and
    logged again in full, so each candidate has exactly one run.
    """
    client = tracker.client
    parent = client.get_run(parent_run_id)
    earlier = client.search_runs(
        [parent.info.experiment_id],
        tag_filter({T.PARENT_RUN: parent_run_id, T.CANDIDATE: candidate}),
    )
    for run in earlier:
        if run.info.status == "FINISHED":
            return run.info.run_id
        client.delete_run(run.info.run_id)
    run_tags = {
        k: v for k, v in parent.data.tags.items() if k.startswith(T.PREFIX) and k != T.RUN_KIND
    }
    run_tags.update(filter_secrets(tags))
    run_tags.update({T.CANDIDATE: candidate, T.RUN_KIND: "candidate"})
    run_id = tracker.create_run("", candidate, run_tags, parent_run_id=parent_run_id)
    try:
        tracker.log(run_id, params=params)
        for probe in sorted(probes, key=lambda p: p.size):
            log_probe(tracker, run_id, probe, data)
        _log_prediction(tracker, run_id, prediction)
        tracker.log(run_id, metrics=extra_metrics or [])
        for artifact_file, payload in (extra_json or {}).items():
            tracker.log_json(run_id, payload, artifact_file)
        for artifact_file, rows in (extra_tables or {}).items():
            tracker.log_table(run_id, rows, artifact_file)
    except Exception:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id, "FINISHED")
    return run_id


def _log_prediction(tracker: Tracker, run_id: str, prediction: dict) -> None:
    if not prediction:
        return
    target = prediction.get("target_size", 0)
    step = target if isinstance(target, int) and not isinstance(target, bool) else 0
    numeric = {
        k: v
        for k, v in prediction.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    metrics = [(f"prediction.{k}", v, step) for k, v in numeric.items()]
    if "predicted_loss" in numeric:
        metrics.append(("test_loss_predicted", numeric["predicted_loss"], step))
    tracker.log(run_id, metrics=metrics)
    tracker.log_json(run_id, prediction, "prediction.json")


def log_benchmark_run(
    tracker: Tracker,
    *,
    experiment: str,
    run_name: str,
    params: dict,
    tags: dict,
    metrics: list[tuple[str, float, int]],
    artifacts_dir: str,
) -> str:
    """Log one finished replay-benchmark run (metrics ``(key, value, step)``, every file below
    ``artifacts_dir`` as an artifact) and return its run id."""
    folder = Path(artifacts_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"artifacts_dir {str(folder)!r} is not a folder; write the benchmark outputs there "
            "first or pass the folder that holds them"
        )
    run_id = tracker.create_run(experiment, run_name, {**tags, T.RUN_KIND: "benchmark"})
    try:
        tracker.log(run_id, metrics=metrics, params=params)
        tracker.log_artifacts(run_id, str(folder))
    except Exception:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id, "FINISHED")
    return run_id
