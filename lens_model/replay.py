"""The replay protocol: run selectors on a published loss table and score them (design.md s5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lens_model.metrics import pearson_correlation, relative_accuracy
from lens_model.selectors import SELECTORS, Selection, TableProbes

DEFAULT_TARGET = 1_638_400
DEFAULT_BUDGETS = (204_800, 102_400, 51_200, 25_600, 12_800, 6_400, 3_200)


@dataclass(frozen=True)
class ReplayResult:
    method: str
    budget: int
    target_size: int
    pear_corr: float
    rel_acc: float
    cost: float
    selection: Selection


def replay(
    sizes: np.ndarray,
    losses: np.ndarray,
    model_sizes: np.ndarray,
    *,
    methods: Sequence[str],
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    target_size: int = DEFAULT_TARGET,
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
    """
    sizes = np.asarray(sizes, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if target_size not in sizes:
        raise ValueError(f"the table has no column for the target size {target_size}")
    truth = losses[:, int(np.flatnonzero(sizes == target_size)[0])]
    selector_classes = [SELECTORS.get(m) for m in methods]  # fail on a bad name before work
    out = []
    for name, cls in zip(methods, selector_classes, strict=True):
        for budget in budgets:
            # Everything strictly below the target is readable; adaptive selectors cap their own
            # spending at their budget's cost, non-adaptive ones read sizes <= budget.
            source = TableProbes(sizes, losses, model_sizes, max_size=target_size - 1)
            sel = cls().select(source, budget=int(budget), target_size=int(target_size))
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
