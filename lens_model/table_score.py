"""Score a selector on a loss table: the one place a selection meets the table's truth.

:func:`score` runs a selector on a :class:`~lens_model.loss_table.LossTable` under the replay
protocol (docs/replay.md: it may read sizes below the target only, and never the target) and
returns a :class:`TableScore`, which holds the selection and the true target losses and scores
them: the selection (PearCorr, RelAcc, Cost), its intervals (coverage, width, interval score,
intervals held) and its pairwise probabilities. The replay, the cost-accuracy curve, the audit
and the calibration replay all score through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lens_model.calibration import coverage, interval_score, pairwise_outcomes
from lens_model.loss_table import LossTable
from lens_model.metrics import pearson_correlation, relative_accuracy
from lens_model.selectors import Selection, Selector, TableProbes


def score(selector: Selector, table: LossTable, *, budget: int, target_size: int) -> TableScore:
    """Run ``selector`` on ``table`` at ``budget`` and score it against the losses at
    ``target_size``.

    Non-adaptive selectors read the sizes up to ``budget``; adaptive ones cap their own
    spending at their budget's cost and may read any size below ``target_size``.

    Raises
    ------
    ValueError
        The table has no ``target_size`` column, or the selector cannot select on this ladder
        at this budget (its message says why).
    """
    truth = table.losses_at(target_size)
    source = TableProbes(table.sizes, table.losses, table.model_sizes, max_size=target_size - 1)
    selection = selector.select(source, budget=int(budget), target_size=int(target_size))
    return TableScore(selection, truth, table.model_sizes, int(budget), int(target_size))


@dataclass(frozen=True)
class TableScore:
    """One selection on a loss table and the table's true losses at the target.

    Attributes
    ----------
    selection : Selection
        What the selector decided.
    truth : ndarray (N,)
        True loss of every candidate at ``target_size``.
    model_sizes : ndarray (N,)
        Parameter counts (the unit of the Cost metric).
    budget, target_size : int
        Where the selection was made and what it predicts.
    """

    selection: Selection
    truth: np.ndarray
    model_sizes: np.ndarray
    budget: int
    target_size: int

    @property
    def pear_corr(self) -> float:
        """PearCorr of the scores as they are (ModelSize's are log sizes) with the truth; NaN
        when a score is not a number."""
        scores = self.selection.scores
        return pearson_correlation(scores, self.truth) if np.isfinite(scores).all() else np.nan

    @property
    def rel_acc(self) -> float:
        """RelAcc of the selected candidate."""
        return relative_accuracy(self.selection.selected, self.truth)

    @property
    def cost(self) -> float:
        """Cost of every probe the selector read."""
        return self.selection.cost(self.model_sizes, self.target_size)

    @property
    def predicts(self) -> bool:
        """Whether the selector predicted a target loss (else there is no interval to score)."""
        return bool(np.isfinite(self.selection.predictions).any())

    def bounds(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The central ``level`` intervals: the selection's own at its level, otherwise from
        its predictive distributions (exact for a calibrated selection)."""
        sel = self.selection
        return (sel.lower, sel.upper) if level == sel.level else sel.interval(level)

    def interval_scores(self, level: float) -> dict:
        """Scores of the ``level`` intervals on log losses: ``coverage`` (share that hold the
        truth), ``median_log_width`` (of ln(upper / lower)) and ``mean_interval_score``
        (Gneiting & Raftery); NaN where no interval is stated."""
        lower, upper = self.bounds(level)
        log_truth = np.log(self.truth)
        with np.errstate(divide="ignore", invalid="ignore"):
            lo, hi = np.log(lower), np.log(upper)
        ok = np.isfinite(lo) & np.isfinite(hi)
        nan = float("nan")
        return {
            "coverage": coverage(lo, hi, log_truth),
            "median_log_width": float(np.median((hi - lo)[ok])) if ok.any() else nan,
            "mean_interval_score": float(np.mean(interval_score(lo, hi, log_truth, level)[ok]))
            if ok.any()
            else nan,
        }

    def intervals_held(self) -> tuple[int, int]:
        """``(held, stated)``: how many of the selection's own intervals hold the true loss,
        out of the candidates with a prediction and an interval."""
        sel = self.selection
        stated = np.isfinite(sel.predictions) & np.isfinite(sel.lower) & np.isfinite(sel.upper)
        held = stated & (sel.lower <= self.truth) & (self.truth <= sel.upper)
        return int(held.sum()), int(stated.sum())

    def pairwise(self) -> tuple[np.ndarray, np.ndarray]:
        """``(P(i better than j), whether i really is better)`` over every ordered pair of
        candidates with a probability (``lens_model.calibration.pairwise_outcomes``)."""
        return pairwise_outcomes(self.selection.prob_better_matrix(), self.truth)
