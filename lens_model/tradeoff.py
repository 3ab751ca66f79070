"""Cost-accuracy trade-off of the adaptive selectors on a loss table (docs/replay.md).

``Lens`` and its peer ``SuccessiveHalving`` are run at fixed fractions of what AtS spends at
the same budget (the same cap for both), next to AtS and SubTuning at every budget, so a
reader sees how much RelAcc / PearCorr each unit of probe compute buys. The Lens settings per
fraction come from a fixed rule on the ladder (never from the target column), so nothing is
tuned on the table being scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lens_model.loss_table import LossTable
from lens_model.selectors import AtS, Lens, SubTuning, SuccessiveHalving, first_round
from lens_model.table_score import TableScore, score

__all__ = ["DENSE_FROM", "FIRST_TOPS", "cost_accuracy_curve", "first_round", "lens_settings"]

DEFAULT_FRACTIONS = (0.25, 0.35, 0.5, 0.75, 1.0)
# Fractions at or above this keep Lens's default ladder (spacing 4, first round up to the
# budget, about 0.67 x AtS); below it the sparser spacing-8 ladder is used (design note:
# measured on FLAN, Lens(cost_fraction=0.5, first_top=0.5, spacing=SPARSE) matched AtS's RelAcc).
DENSE_FROM = 0.67
SPARSE = 8  # spacing of the ladder below DENSE_FROM
FIRST_TOPS = tuple(2.0**-k for k in range(12))  # 1, 1/2, 1/4, ... tried largest first


def lens_settings(
    ladder: np.ndarray, budget: int, fraction: float
) -> tuple[dict | None, str | None]:
    """Lens keyword arguments for ``fraction`` of AtS's cost at ``budget``, or a skip reason.

    Rule: fractions >= ``DENSE_FROM`` use spacing 4 and the first round up to the budget when
    that round fits; otherwise spacing 8 and the largest first round (first_top = 1, 1/2, 1/4,
    ...) whose cost fits within ``fraction`` x AtS. A first round needs two sizes (the line
    extrapolation needs two points), so a fraction below the cheapest such round is skipped.
    Only the ladder and the budget are read, never a loss.

    Parameters
    ----------
    ladder : ndarray
        Positive sizes strictly below the target (what Lens may probe), increasing.
    budget : int
        The budget (a ladder size).
    fraction : float
        Cap on Lens's cost as a fraction of AtS's cost at ``budget``, in (0, 1].
    """
    ats = ladder[ladder <= budget].sum()  # per unit of parameters, as in Lens's own cap
    if fraction >= DENSE_FROM:
        first = first_round(ladder, budget, first_top=1.0, spacing=4)
        if sum(first) <= fraction * ats * (1 + 1e-12):
            return {"cost_fraction": fraction, "first_top": 1.0, "spacing": 4}, None
    cheapest = None
    for first_top in FIRST_TOPS:
        first = first_round(ladder, budget, first_top=first_top, spacing=SPARSE)
        if len(first) < 2:  # Lens's line extrapolation needs two sizes per model
            break
        cheapest = first
        if sum(first) <= fraction * ats * (1 + 1e-12):
            return {"cost_fraction": fraction, "first_top": first_top, "spacing": SPARSE}, None
    if cheapest is None:
        return None, f"the ladder below budget {budget} has no two sizes {SPARSE} apart"
    return None, (
        f"no first round fits: the cheapest one ({cheapest} per model) costs "
        f"{sum(cheapest) / ats:.3f} x AtS at budget {budget}, above the fraction {fraction}"
    )


def _row(method: str, fraction: float, scored: TableScore, settings: dict) -> dict:
    return {
        "method": method,
        "cost_fraction_setting": fraction,
        "budget": scored.budget,
        "cost": scored.cost,
        "pear_corr": scored.pear_corr,
        "rel_acc": scored.rel_acc,
        "first_top": settings.get("first_top", np.nan),
        "spacing": settings.get("spacing", np.nan),
        "skipped": "",
    }


def _skipped(fraction: float, budget: int, reason: str) -> dict:
    nan = dict.fromkeys(("cost", "pear_corr", "rel_acc", "first_top", "spacing"), np.nan)
    return (
        {"method": "Lens", "cost_fraction_setting": fraction, "budget": int(budget)}
        | nan
        | {"skipped": reason}
    )


def cost_accuracy_curve(
    table: LossTable,
    *,
    budgets: Sequence[int],
    target_size: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> list[dict]:
    """Lens and SuccessiveHalving at each cost fraction of AtS, plus AtS and SubTuning, at
    every budget.

    Parameters
    ----------
    table : LossTable
        Must have a ``target_size`` column.
    budgets : sequence of int
        Budgets (ladder sizes below the target).
    target_size : int
        The size whose losses are the ground truth; never read by a selector.
    fractions : sequence of float
        Lens cost caps as fractions of AtS's cost at the same budget, each in (0, 1].

    Returns
    -------
    list of dict
        One row per (method, fraction, budget): ``method``, ``cost_fraction_setting`` (NaN for
        AtS and SubTuning), ``budget``, ``cost``, ``pear_corr``, ``rel_acc``, the Lens
        ``first_top`` / ``spacing`` used and ``skipped`` (the reason, metrics NaN, when no first
        round fits within the fraction).
    """
    table.losses_at(target_size)  # no target column: fail before any work
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"cost fractions must be in (0, 1], got {bad}")
    sizes = table.sizes.astype(float)
    ladder = sizes[(sizes > 0) & (sizes < target_size)]
    rows = []
    for budget in budgets:
        if budget not in ladder:
            raise ValueError(f"budget {budget} is not on the ladder {ladder.astype(int).tolist()}")
        ats = score(AtS(), table, budget=budget, target_size=target_size)
        rows.append(_row("AtS", np.nan, ats, {}))
        sub = score(SubTuning(), table, budget=budget, target_size=target_size)
        rows.append(_row("SubTuning", np.nan, sub, {}))
        for fraction in fractions:
            settings, reason = lens_settings(ladder, int(budget), fraction)
            if settings is None:
                rows.append(_skipped(fraction, budget, reason))
                continue
            lens = score(Lens(**settings), table, budget=budget, target_size=target_size)
            rows.append(_capped_row("Lens", fraction, lens, ats, settings))
        for fraction in fractions:
            halving = SuccessiveHalving(cost_fraction=fraction)
            try:
                sh = score(halving, table, budget=budget, target_size=target_size)
            except ValueError as err:  # no schedule fits this fraction's cap
                rows.append(_skipped(fraction, budget, str(err)) | {"method": "SuccessiveHalving"})
                continue
            rows.append(_capped_row("SuccessiveHalving", fraction, sh, ats, {}))
    return rows


def _capped_row(method: str, fraction: float, scored: TableScore, ats: TableScore, settings):
    """The row of an adaptive selector capped at ``fraction`` x AtS (a breach is a bug: both
    cap themselves)."""
    if scored.cost > fraction * ats.cost + 1e-9:
        raise RuntimeError(
            f"{method} spent {scored.cost:.6f} > {fraction} x AtS ({ats.cost:.6f}) at "
            f"budget {scored.budget}"
        )
    return _row(method, fraction, scored, settings)
