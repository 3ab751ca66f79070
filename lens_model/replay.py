"""The replay protocol: run selectors on a published loss table and score them (docs/replay.md).

``replay`` scores the selections (PearCorr, RelAcc, Cost); ``calibration_replay`` scores
their intervals (coverage, width, interval score at several nominal levels) and their pairwise
probabilities (reliability), for the calibrated and the heuristic intervals side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lens_model.calibration import coverage, interval_score, pairwise_outcomes, reliability
from lens_model.metrics import pearson_correlation, relative_accuracy
from lens_model.selectors import SELECTORS, Selection, Selector, TableProbes

DEFAULT_TARGET = 1_638_400
DEFAULT_BUDGETS = (204_800, 102_400, 51_200, 25_600, 12_800, 6_400, 3_200)
DEFAULT_LEVELS = (0.5, 0.8, 0.9)
INTERVAL_KINDS = ("calibrated", "heuristic")


@dataclass(frozen=True)
class ReplayResult:
    method: str
    budget: int
    target_size: int
    pear_corr: float
    rel_acc: float
    cost: float
    selection: Selection


def make_selectors(methods: Sequence[str]) -> dict[str, Selector]:
    """One selector per method name (unknown names raise before any work). Passing the same
    dict to :func:`replay` and :func:`calibration_replay` lets them share each selector's
    memoised fits."""
    classes = [SELECTORS.get(m) for m in methods]
    return {m: cls() for m, cls in zip(methods, classes, strict=True)}


def _truth(sizes: np.ndarray, losses: np.ndarray, target_size: int) -> np.ndarray:
    if target_size not in sizes:
        raise ValueError(f"the table has no column for the target size {target_size}")
    return losses[:, int(np.flatnonzero(sizes == target_size)[0])]


def _select(selector: Selector, sizes, losses, model_sizes, budget: int, target: int, **settings):
    """One selection; only sizes below the target are readable (adaptive selectors cap their
    own spending at their budget's cost, non-adaptive ones read sizes <= budget)."""
    for name, value in settings.items():
        setattr(selector, name, value)
    source = TableProbes(sizes, losses, model_sizes, max_size=target - 1)
    return selector.select(source, budget=int(budget), target_size=int(target))


def replay(
    sizes: np.ndarray,
    losses: np.ndarray,
    model_sizes: np.ndarray,
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
    sizes : array_like (m,)
        Column sizes of the table, 0 = zero-shot, must include ``target_size``.
    losses : array_like (N, m)
        True test losses.
    model_sizes : array_like (N,)
        Parameter counts.
    selectors : dict, optional
        Selector instances by method name (:func:`make_selectors`); missing ones are made.
    level, interval
        Interval settings of every selection.
    """
    sizes = np.asarray(sizes, dtype=float)
    losses = np.asarray(losses, dtype=float)
    truth = _truth(sizes, losses, target_size)
    selectors = selectors if selectors is not None else {}
    selectors.update(make_selectors([m for m in methods if m not in selectors]))
    out = []
    for name in methods:
        for budget in budgets:
            sel = _select(
                selectors[name],
                sizes,
                losses,
                model_sizes,
                budget,
                target_size,
                level=level,
                interval=interval,
            )
            out.append(
                ReplayResult(
                    method=name,
                    budget=int(budget),
                    target_size=int(target_size),
                    pear_corr=pearson_correlation(sel.scores, truth),
                    rel_acc=relative_accuracy(sel.selected, truth),
                    cost=sel.cost(model_sizes, target_size),
                    selection=sel,
                )
            )
    return out


def method_label(method: str, interval: str) -> str:
    """``"AtS"`` for calibrated intervals, ``"AtS (heuristic)"`` for the heuristic ones."""
    return method if interval == "calibrated" else f"{method} ({interval})"


def calibration_replay(
    sizes: np.ndarray,
    losses: np.ndarray,
    model_sizes: np.ndarray,
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
        Per method label, the reliability (:func:`lens_model.calibration.reliability`) of
        ``P(i better than j)`` over every ordered pair of candidates with predictions, pooled
        over the budgets (level-independent; taken from the runs at the highest level).
    """
    sizes = np.asarray(sizes, dtype=float)
    losses = np.asarray(losses, dtype=float)
    log_truth = np.log(_truth(sizes, losses, target_size))
    selectors = selectors if selectors is not None else {}
    selectors.update(make_selectors([m for m in methods if m not in selectors]))
    rows, pairwise = [], {}
    top = max(levels)
    for name in methods:
        for kind in intervals:
            label, probs, outcomes = method_label(name, kind), [], []
            for budget in budgets:
                for level in sorted(levels, reverse=True):
                    if kind != "calibrated" or level == top:
                        sel = _select(
                            selectors[name],
                            sizes,
                            losses,
                            model_sizes,
                            budget,
                            target_size,
                            level=level,
                            interval=kind,
                        )
                        if not np.isfinite(sel.predictions).any():
                            break  # this selector predicts no loss: nothing to score
                    # a calibrated selection reports every level from one predictive model;
                    # one with too few probes for a backtest has none (NaN bounds)
                    lower, upper = (
                        sel.interval(level) if kind == "calibrated" else (sel.lower, sel.upper)
                    )
                    row = _interval_row(label, budget, level, lower, upper, log_truth)
                    rows.append(row | {"interval_method": sel.interval_method})
                    if level == top:
                        p, o = pairwise_outcomes(sel.prob_better_matrix(), np.exp(log_truth))
                        probs.append(p)
                        outcomes.append(o)
            if probs:
                pairwise[label] = reliability(np.concatenate(probs), np.concatenate(outcomes))
                pairwise[label]["n_bins"] = n_bins
    return rows, pairwise


def _interval_row(label: str, budget: int, level: float, lower, upper, log_truth) -> dict:
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = np.log(lower), np.log(upper)
    ok = np.isfinite(lo) & np.isfinite(hi)
    return {
        "method": label,
        "budget": int(budget),
        "nominal": float(level),
        "coverage": coverage(lo, hi, log_truth),
        "median_log_width": float(np.median((hi - lo)[ok])) if ok.any() else float("nan"),
        "mean_interval_score": float(np.mean(interval_score(lo, hi, log_truth, level)[ok]))
        if ok.any()
        else float("nan"),
    }
