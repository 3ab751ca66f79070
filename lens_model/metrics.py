"""Selection metrics of the replay protocol (docs/replay.md) and fit error."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def pearson_correlation(scores: np.ndarray, true_losses: np.ndarray) -> float:
    """Pearson correlation (float64) between a method's per-model scores and the true losses."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(true_losses, dtype=np.float64)
    if s.shape != t.shape or s.ndim != 1 or len(s) < 2:
        raise ValueError("scores and true losses must be 1-D arrays of equal length >= 2")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
        raise ValueError("scores and true losses must be finite")
    s, t = s - s.mean(), t - t.mean()
    denom = np.sqrt(np.sum(s * s) * np.sum(t * t))
    return float(np.sum(s * t) / denom) if denom > 0 else float("nan")


def relative_accuracy(selected: int, true_losses: np.ndarray) -> float:
    """RelAcc = (L_worst - L_selected) / (L_worst - L_best) on the true target losses."""
    t = np.asarray(true_losses, dtype=np.float64)
    worst, best = t.max(), t.min()
    if worst == best:
        return 1.0
    return float((worst - t[selected]) / (worst - best))


def probe_cost(
    probes: Iterable[tuple[int, float]], model_sizes: np.ndarray, target_size: float
) -> float:
    """Cost = sum over probes (m, D) of size_m * D / sum over models of size_m * target_size.

    Fine-tuning FLOPs are proportional to parameters x examples, so this is the fraction of the
    compute of fine-tuning every candidate on the full target data.
    """
    n_params = np.asarray(model_sizes, dtype=np.float64)
    spent = sum(n_params[m] * d for m, d in probes)
    return float(spent / (n_params.sum() * target_size))


def rmse_log(predicted: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Root mean squared error in log space along the last axis (NaN observations ignored)."""
    p = np.log(np.asarray(predicted, dtype=float))
    o = np.log(np.asarray(observed, dtype=float))
    return np.sqrt(np.nanmean((p - o) ** 2, axis=-1))
