"""Comparing two models measured on the same test examples: a paired bootstrap.

Both models are scored on the same examples, so their per-example losses are paired; resampling
examples (the same indices for both) keeps the pairing and gives the sampling distribution of
the difference of the aggregate losses (Efron and Tibshirani 1993; the standard comparison of
two systems on one test set, e.g. Koehn 2004 for machine translation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """A challenger against a reference on the same examples (lower loss is better).

    Attributes
    ----------
    challenger_loss, reference_loss : float
        Aggregate losses on all examples (sum of losses over sum of units).
    difference : float
        ``challenger_loss - reference_loss`` (negative: the challenger is better).
    difference_low, difference_high : float
        Central ``level`` bootstrap percentile interval of the difference.
    p_better : float
        Share of bootstrap resamples in which the challenger's loss is lower.
    n_examples, n_resamples : int
    level : float
    """

    challenger_loss: float
    reference_loss: float
    difference: float
    difference_low: float
    difference_high: float
    p_better: float
    n_examples: int
    n_resamples: int
    level: float


def paired_bootstrap(
    challenger_sums,
    reference_sums,
    units,
    *,
    n_resamples: int = 10_000,
    level: float = 0.9,
    scale: float = 1.0,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of a ratio loss: ``scale * sum(loss) / sum(units)`` per model.

    Parameters
    ----------
    challenger_sums, reference_sums : array_like, shape (n,)
        Each example's summed loss (e.g. NLL in nats over its target tokens) under each model.
    units : array_like, shape (n,) or (2, n)
        What the loss is divided by: each example's target bytes (loss per byte, the same for
        both models), or one row per model (e.g. target tokens of two different tokenizers).
    scale : float
        Multiplies both aggregates (``1 / ln 2`` turns nats per byte into bits per byte).
    seed : int
        Seed of the resampling (deterministic).
    """
    a = np.asarray(challenger_sums, dtype=float)
    b = np.asarray(reference_sums, dtype=float)
    u = np.asarray(units, dtype=float)
    u_a, u_b = (u, u) if u.ndim == 1 else (u[0], u[1])
    n = len(a)
    if n < 2 or b.shape != (n,) or u_a.shape != (n,) or u_b.shape != (n,):
        raise ValueError(
            f"need per-example losses and units of the same length >= 2; got {a.shape}, "
            f"{b.shape}, {u.shape}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("per-example losses must be finite to be compared")
    if np.any(u_a <= 0) or np.any(u_b <= 0):
        raise ValueError("units (bytes or tokens) must be positive")
    if not 0 < level < 1 or n_resamples < 100:
        raise ValueError(f"need 0 < level < 1 and n_resamples >= 100 (got {level}, {n_resamples})")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    loss_a = scale * a[idx].sum(axis=1) / u_a[idx].sum(axis=1)
    loss_b = scale * b[idx].sum(axis=1) / u_b[idx].sum(axis=1)
    diff = loss_a - loss_b
    full_a, full_b = scale * a.sum() / u_a.sum(), scale * b.sum() / u_b.sum()
    lo, hi = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
    # Ties (identical losses) count half for each side, so identical models give 0.5.
    p_better = float(np.mean(diff < 0) + 0.5 * np.mean(diff == 0))
    return PairedComparison(
        challenger_loss=float(full_a),
        reference_loss=float(full_b),
        difference=float(full_a - full_b),
        difference_low=float(lo),
        difference_high=float(hi),
        p_better=p_better,
        n_examples=n,
        n_resamples=n_resamples,
        level=level,
    )
