"""The live calibration record read back from MLflow: every finished selection with a check at
the target, and every candidate it checked.

Each checked candidate's run carries its own ``target.*`` metrics; the parent run carries the
winner's and lists every check in ``checks.json``. Records written before candidates carried
their checks are read from ``checks.json``; where even that is missing only the winner counts,
and the entry says so (``winner_only``). A selection that ``lensllm audit`` ran (its
``audit/audit.json`` artifact) is an audit.
"""

from __future__ import annotations

import math

from mlflow.exceptions import MlflowException

from tasks.records.schema import CheckedSelection, TargetCheck
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker, tag_filter

_CHECKED = "metrics.`target.measured_loss` > 0 and attributes.status = 'FINISHED'"
_MAX_RUNS = 10_000


def checked_selections(tracker: Tracker, experiment: str | None = None) -> list[CheckedSelection]:
    """Every finished selection with a check at the target (in ``experiment``, or in every
    experiment), oldest first, with every candidate it checked."""
    client = tracker.client
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found is not None else []
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    parents = client.search_runs(
        ids,
        f"{tag_filter({T.RUN_KIND: 'selection'})} and {_CHECKED}",
        max_results=_MAX_RUNS,
        order_by=["attributes.start_time"],
    )
    children = client.search_runs(
        ids, f"{tag_filter({T.RUN_KIND: 'candidate'})} and {_CHECKED}", max_results=_MAX_RUNS
    )
    by_parent: dict[str, list] = {}
    for child in children:
        by_parent.setdefault(child.data.tags.get(T.PARENT_RUN, ""), []).append(child)
    return [_entry(tracker, run, by_parent.get(run.info.run_id, [])) for run in parents]


def _entry(tracker: Tracker, run, children: list) -> CheckedSelection:
    params, tags = run.data.params, run.data.tags
    rank_on, target = params.get("rank_on", ""), int(params.get("target_size", 0))
    winner_only = False
    if children:
        checks = [_check(c.data.metrics, c.data.tags[T.CANDIDATE], rank_on, target)
                  for c in children]  # fmt: skip
    else:
        checks = _checks_json(tracker, run.info.run_id)
        if checks is None:
            winner_only = True
            winner = tags.get(T.CANDIDATE_SELECTED, "")
            checks = [_check(run.data.metrics, winner, rank_on, target, rank=1)]
    return CheckedSelection(
        kind="audit" if _audited(tracker, run.info.run_id) else "selection",
        source=run.info.run_id,
        task=tags.get(T.TASK, ""),
        selector=params.get("selector", ""),
        selected=tags.get(T.CANDIDATE_SELECTED, ""),
        checks=sorted(checks, key=lambda c: c.rank),
        selection_run=run.info.run_id,
        winner_only=winner_only,
    )


def _check(
    m: dict, candidate: str, rank_on: str, target_size: int, rank: int | None = None
) -> TargetCheck:
    """A check from a run's ``target.*`` metrics (``prediction.rank`` on a candidate run)."""
    if rank is None:
        value = m.get("prediction.rank", math.nan)
        rank = int(value) if math.isfinite(value) else 0
    return TargetCheck(
        candidate=candidate,
        rank=rank,
        target_size=target_size,
        trained_examples=int(m.get("target.trained_examples", target_size)),
        rank_on=rank_on,
        measured_loss=m["target.measured_loss"],
        predicted_loss=m["target.predicted_loss"],
        interval_low=m["target.interval_low"],
        interval_high=m["target.interval_high"],
        level=m["target.level"],
    )


def _checks_json(tracker: Tracker, run_id: str) -> list[TargetCheck] | None:
    """Every check of a selection from its ``checks.json``; None where it has none."""
    try:
        rows = tracker.load_json(run_id, "checks.json")
    except (MlflowException, OSError):
        return None
    fields = set(TargetCheck.model_fields)
    return [TargetCheck(**{k: v for k, v in row.items() if k in fields}) for row in rows]


def _audited(tracker: Tracker, run_id: str) -> bool:
    """Whether ``lensllm audit`` ran this selection (it logs ``audit/audit.json``)."""
    try:
        files = tracker.client.list_artifacts(run_id, "audit")
    except (MlflowException, OSError):
        return False
    return any(f.path.endswith("audit.json") for f in files)
