"""Least-squares lines through many log-log curves at once.

Phase detection (``lens_model.phase``) fits one curve with these functions and the
calibration backtests (``lens_model.calibration``) fit every cut of every curve with the same
ones: AtS's power-phase line and Lens's secant each have one implementation.
"""

from __future__ import annotations

import numpy as np


def pack_curves(sizes: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's finite points at positive sizes, packed left in increasing size.

    Returns ``(x, y, count)``: ``x = ln D`` and ``y = ln L`` of shape (N, M) (NaN past each
    row's ``count`` points).
    """
    sizes = np.asarray(sizes, dtype=float)
    losses = np.atleast_2d(np.asarray(losses, dtype=float))
    order = np.argsort(sizes, kind="stable")
    sizes, losses = sizes[order], losses[:, order]
    ok = np.isfinite(losses) & (sizes > 0)[None, :]
    count = ok.sum(axis=1)
    # a stable sort of "not ok" moves each row's used points to the front, in size order
    idx = np.argsort(~ok, axis=1, kind="stable")
    width = max(int(count.max(initial=0)), 1)
    idx = idx[:, :width]
    rows = np.arange(idx.shape[0])[:, None]
    used = np.arange(width)[None, :] < count[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(used, np.log(np.broadcast_to(sizes, losses.shape)[rows, idx]), np.nan)
        y = np.where(used, np.log(losses[rows, idx]), np.nan)
    return x, y, count


def window_lines(x, y, lo, hi):
    """Least-squares lines through columns ``lo <= j < hi`` of each row (batched).

    Returns ``(slope, intercept, spread)`` with ``spread`` the population standard deviation
    of the residuals in the window.
    """
    j = np.arange(x.shape[1])[None, :]
    w = ((j >= lo[:, None]) & (j < hi[:, None])).astype(float)
    n = w.sum(axis=1)
    xs, ys = np.where(w > 0, x, 0.0), np.where(w > 0, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = xs.sum(axis=1) / n, ys.sum(axis=1) / n
        dx, dy = (xs - mx[:, None]) * w, (ys - my[:, None]) * w
        slope = (dx * dy).sum(axis=1) / (dx * dx).sum(axis=1)
        icpt = my - slope * mx
        resid = (ys - (slope[:, None] * xs + icpt[:, None])) * w
        spread = np.sqrt((resid**2).sum(axis=1) / n)
    return slope, icpt, spread


def power_phase_counts(
    x: np.ndarray, y: np.ndarray, count: np.ndarray, *, k: int = 3, delta: float = 5.0
) -> np.ndarray:
    """How many of each curve's largest points form its power phase (AtS's "Accept then
    Stop", :func:`lens_model.phase.detect_power_phase`), for many curves at once.

    Starting from the ``k`` largest points, a curve's line is refitted with one more point
    while the next smaller point's absolute residual is at most ``delta`` times the population
    standard deviation of the fitted points' residuals. As in the reference implementation
    the smallest point is dropped even when no point is ever rejected, and a curve of ``k``
    or fewer points keeps them all.

    Parameters
    ----------
    x, y : ndarray (N, M)
        ``ln D`` and ``ln L`` of each curve, packed left in increasing size (NaN past
        ``count``).
    count : ndarray of int (N,)
        Points per curve (>= 1).
    k, delta
        Points of the first fit, and the rejection threshold in residual standard deviations.
    """
    count = np.asarray(count, dtype=int)
    rows = np.arange(len(x))
    n_fit = np.where(count <= k, count, count - 1)
    running = count > k
    for n in range(k, int(count.max(initial=0))):
        act = running & (n < count)
        if not act.any():
            break
        slope, icpt, spread = window_lines(x, y, count - n, count)
        j0 = np.clip(count - n - 1, 0, x.shape[1] - 1)
        # a perfect line (spread 0) rejects any point off it, as the reference's division does
        with np.errstate(invalid="ignore"):
            off = np.abs(y[rows, j0] - (slope * x[rows, j0] + icpt))
            reject = act & (off > delta * spread)
        n_fit = np.where(reject, n, n_fit)
        running &= ~reject
    return n_fit


def power_phase_lines(
    x: np.ndarray, y: np.ndarray, count: np.ndarray, *, k: int = 3, delta: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """AtS's power-phase line of many curves at once: the least-squares line through the
    points :func:`power_phase_counts` accepts (a flat line through a single point).

    Parameters are those of :func:`power_phase_counts`. Returns ``(slope, intercept)``, each
    of shape (N,).
    """
    count = np.asarray(count, dtype=int)
    rows = np.arange(len(x))
    n_fit = power_phase_counts(x, y, count, k=k, delta=delta)
    slope, icpt, _ = window_lines(x, y, count - n_fit, count)
    single = n_fit == 1
    y_last = y[rows, np.maximum(count - 1, 0)]
    return np.where(single, 0.0, slope), np.where(single, y_last, icpt)


def secant_lines(x: np.ndarray, y: np.ndarray, count: np.ndarray):
    """The secant through each curve's two largest points (Lens's local slope): ``(slope,
    intercept)``, NaN for a curve of one point."""
    rows = np.arange(len(x))
    last, prev = np.maximum(count - 1, 0), np.maximum(count - 2, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (y[rows, last] - y[rows, prev]) / (x[rows, last] - x[rows, prev])
    return slope, y[rows, last] - slope * x[rows, last]
