"""The replay protocol: run selectors on a loss table and score them (docs/replay.md).

``replay`` scores the selections (PearCorr, RelAcc, Cost); ``calibration_replay`` scores
their intervals (coverage, width, interval score at several nominal levels) and their pairwise
probabilities (reliability), for the calibrated and the heuristic intervals side by side. Both
score every selection with :func:`lens_model.table_score.score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lens_model.calibration import reliability
from lens_model.error_model import (
    COMPONENT_PSEUDO_ERRORS,
    PSEUDO_ERRORS_PER_TASK,
    ErrorGroup,
    ErrorModel,
    fit_family,
)
from lens_model.loss_table import LossTable
from lens_model.selectors import SELECTORS, Selector
from lens_model.table_score import TableScore, score

DEFAULT_TARGET = 1_638_400
DEFAULT_BUDGETS = (204_800, 102_400, 51_200, 25_600, 12_800, 6_400, 3_200)
DEFAULT_LEVELS = (0.5, 0.8, 0.9)
INTERVAL_KINDS = ("calibrated", "heuristic")
# with an error model, "calibrated" is its prior updated with the selection's backtest, and
# "in-selection" the backtest alone (the selector's copy without the error model)
IN_SELECTION = "in-selection"


@dataclass(frozen=True)
class ReplayResult:
    """One method at one budget: its scored selection."""

    method: str
    score: TableScore


def make_selectors(
    methods: Sequence[str], *, error_model: ErrorModel | None = None
) -> dict[str, Selector]:
    """One selector per method name, default settings but ``error_model`` (unknown names
    raise before any work).

    Passing the same dict to :func:`replay` and :func:`calibration_replay` lets them share
    each selector's memoised fits: their copies with other interval settings
    (``Selector.replace``) share them too."""
    classes = [SELECTORS.get(m) for m in methods]
    return {m: cls(error_model=error_model) for m, cls in zip(methods, classes, strict=True)}


def _selectors(methods: Sequence[str], selectors: dict[str, Selector] | None) -> dict:
    given = dict(selectors or {})
    return given | make_selectors([m for m in methods if m not in given])


def replay(
    table: LossTable,
    *,
    methods: Sequence[str],
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    target_size: int = DEFAULT_TARGET,
    selectors: dict[str, Selector] | None = None,
    level: float = 0.9,
    interval: str = "calibrated",
) -> list[ReplayResult]:
    """Run every method at every budget; selectors may read sizes below ``target_size`` only.

    Parameters
    ----------
    table : LossTable
        Must have a ``target_size`` column.
    selectors : dict, optional
        Selector instances by method name (:func:`make_selectors`); missing ones are made.
        Each runs as a copy with ``level`` and ``interval``.
    level, interval
        Interval settings of every selection.
    """
    table.losses_at(target_size)  # no target column: fail before any work
    selectors = _selectors(methods, selectors)
    return [
        ReplayResult(
            method=name,
            score=score(
                selectors[name].replace(level=level, interval=interval),
                table,
                budget=budget,
                target_size=target_size,
            ),
        )
        for name in methods
        for budget in budgets
    ]


def method_label(method: str, interval: str) -> str:
    """``"AtS"`` for calibrated intervals, ``"AtS (heuristic)"`` for the heuristic ones."""
    return method if interval == "calibrated" else f"{method} ({interval})"


def calibration_replay(
    table: LossTable,
    *,
    methods: Sequence[str],
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    target_size: int = DEFAULT_TARGET,
    levels: Sequence[float] = DEFAULT_LEVELS,
    intervals: Sequence[str] = INTERVAL_KINDS,
    selectors: dict[str, Selector] | None = None,
    n_bins: int = 10,
) -> tuple[list[dict], dict[str, dict]]:
    """How well the intervals and pairwise probabilities of ``methods`` hold on a table.

    Every method that predicts a target loss is run at every budget and for each interval
    kind. A heuristic selector is run at each nominal level (it reports its own interval at
    that level); a calibrated one once, at the highest level, its intervals at the other
    levels coming from the same predictive distributions (``Selection.interval``), which is
    exactly what a run at that level reports. Scores are on log losses.

    Returns
    -------
    rows : list of dict
        One per (method label, budget, nominal level): ``method``, ``budget``, ``nominal``,
        ``coverage`` (share of the candidates' intervals that hold the true target loss),
        ``median_log_width`` (median of ln(upper / lower)), ``mean_interval_score`` and
        ``interval_method`` (``"none"`` where a calibrated selector had too few probes for a
        backtest: its coverage and widths are NaN).
    pairwise : dict
        Per method label, the reliability (:func:`lens_model.calibration.reliability`, in
        ``n_bins`` bins) of ``P(i better than j)`` over every ordered pair of candidates with
        predictions, pooled over the budgets (level-independent; taken from the runs at the
        highest level).
    """
    table.losses_at(target_size)
    selectors = _selectors(methods, selectors)
    rows, pairwise = [], {}
    levels = sorted(levels, reverse=True)
    for name in methods:
        for kind in intervals:
            label, pairs = method_label(name, kind), []
            for budget in budgets:
                scores = _scores_by_level(selectors[name], table, budget, target_size, levels, kind)
                if not scores[levels[0]].predicts:
                    continue  # this selector predicts no loss: nothing to score
                for level in levels:
                    rows.append(
                        {"method": label, "budget": int(budget), "nominal": float(level)}
                        | scores[level].interval_scores(level)
                        | {"interval_method": scores[level].selection.interval_method}
                    )
                pairs.append(scores[levels[0]].pairwise())
            if pairs:
                probs, outcomes = (np.concatenate(part) for part in zip(*pairs, strict=True))
                pairwise[label] = reliability(probs, outcomes, n_bins) | {"n_bins": n_bins}
    return rows, pairwise


def _as_kind(selector: Selector, level: float, kind: str) -> Selector:
    if kind == IN_SELECTION:
        return selector.replace(level=level, interval="calibrated", error_model=None)
    return selector.replace(level=level, interval=kind)


def _scores_by_level(selector, table, budget, target_size, levels, kind) -> dict:
    """The scored selection behind each level's intervals (``levels`` highest first): one
    run at the highest level for a calibrated selector (its predictive distributions give
    every level), one per level for a heuristic one (none after a run that predicts nothing).
    """
    runs = levels if kind == "heuristic" else levels[:1]
    out = {}
    for level in runs:
        selector_at = _as_kind(selector, level, kind)
        out[level] = score(selector_at, table, budget=budget, target_size=target_size)
        if not out[level].predicts:
            break
    return {level: out.get(level, out[levels[0]]) for level in levels}


# -- the cross-task error model --------------------------------------------------------------
ERROR_MODEL_METHODS = ("Lens", "AtS")


def fitting_selections(table: LossTable) -> list[tuple[int, int]]:
    """``(budget, target)`` of every selection a table offers for fitting an error model:
    each positive size as a (pretend) target, each smaller size with at least one positive
    size below it as a budget."""
    sizes = [int(d) for d in table.sizes if d > 0]
    return [(b, t) for t in sizes for b in sizes if b < t and sizes.index(b) >= 1]


def error_groups(
    tables: Sequence[LossTable], methods: Sequence[str] = ERROR_MODEL_METHODS
) -> dict[str, list[ErrorGroup]]:
    """Every selection's errors (backtest and target) by predictor family, from running
    ``methods`` (in-selection calibration, no prior) at every :func:`fitting_selections` of
    every table. Selections a selector cannot make (too short a ladder) are skipped."""
    selectors = {m: SELECTORS.get(m)(interval="calibrated") for m in methods}
    groups: dict[str, list[ErrorGroup]] = {}
    for table in tables:
        for budget, target in fitting_selections(table):
            for name, selector in selectors.items():
                try:
                    scored = score(selector, table, budget=budget, target_size=target)
                except ValueError:
                    continue
                evidence = scored.selection.evidence
                if evidence is not None:
                    label = f"{table.name} {name} {budget}->{target}"
                    groups.setdefault(evidence.family, []).append(
                        evidence.group(scored.truth, label, table.name)
                    )
    return groups


def fit_error_model(
    tables: Sequence[LossTable],
    *,
    methods: Sequence[str] = ERROR_MODEL_METHODS,
    seed: int = 0,
    source: str = "",
) -> ErrorModel:
    """The error model (``lens_model.error_model``) fitted on every selection of ``tables``:
    one :class:`FamilyPrior` per predictor family with errors from at least two selections."""
    return fit_groups(_flat_groups(error_groups(tables, methods)), seed=seed, source=source)


def _flat_groups(groups_by_family: dict[str, list[ErrorGroup]]) -> list[tuple[str, ErrorGroup]]:
    return [(family, g) for family, part in groups_by_family.items() for g in part]


def fit_groups(
    groups,
    *,
    seed: int = 0,
    source: str = "",
    pseudo_errors_per_task: float | None = PSEUDO_ERRORS_PER_TASK,
    component_pseudo_errors: float | None = COMPONENT_PSEUDO_ERRORS,
    per_task: bool = True,
) -> ErrorModel:
    """The error model fitted on ``(family, group)`` pairs (:func:`error_groups` flattened):
    one :class:`FamilyPrior` per family with errors from at least two selections, its
    pseudo-counts capped at ``pseudo_errors_per_task`` per task and its task components' at
    ``component_pseudo_errors`` (``fit_family``; ``per_task=False``: the pooled prior
    alone, no task components)."""
    by_family: dict[str, list[ErrorGroup]] = {}
    for family, g in groups:
        by_family.setdefault(family, []).append(g)
    families = {
        family: fit_family(
            part,
            seed=seed,
            pseudo_errors_per_task=pseudo_errors_per_task,
            component_pseudo_errors=component_pseudo_errors,
            per_task=per_task,
        )
        for family, part in sorted(by_family.items())
        if sum(g.errors.size > 0 for g in part) >= 2
    }
    if not families:
        raise ValueError("no predictor family has errors from two selections in these tables")
    return ErrorModel(families, source=source)
