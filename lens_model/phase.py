"""Phase detection: where the power phase of a fine-tuning curve starts (Lin et al.'s AtS).

In log-log space a fine-tuning curve is flat at small D (pre-power phase) and a straight line
at large D (power phase). "Accept then Stop" grows a line fit from the largest sizes downwards
and stops at the first point that lies too far from it.
"""

from __future__ import annotations

import numpy as np

from lens_model.calibration import NOISE_FLOOR
from lens_model.lines import power_phase_counts


def detect_power_phase(sizes: np.ndarray, losses: np.ndarray, *, k: int = 3, delta: float = 5.0):
    """Indices (into the size-sorted input) of the points in the power phase.

    Starting from the ``k`` largest sizes, fit a least-squares line to (ln D, ln L); if the next
    smaller point's absolute residual exceeds ``delta`` times the population standard deviation
    of the fitted points' residuals, stop; otherwise accept it and refit. As in the reference
    implementation, the smallest point is dropped even when no point is ever rejected, and with
    ``k`` or fewer points all are used.

    Parameters
    ----------
    sizes, losses : array_like, shape (m,)
        Positive sizes (zero-shot excluded) and losses, in increasing order of size.
    k : int
        Points in the first fit.
    delta : float
        Rejection threshold in residual standard deviations.

    Returns
    -------
    ndarray of int
        Indices of the accepted points (a suffix of the input).
    """
    x, y = _log_xy(sizes, losses)
    if k < 2:
        raise ValueError(f"k must be >= 2 (a line needs two points), got {k}")
    m = len(x)
    n_fit = int(power_phase_counts(x[None, :], y[None, :], np.array([m]), k=k, delta=delta)[0])
    return np.arange(m - n_fit, m)


def fit_power_phase(sizes, losses, *, k: int = 3, delta: float = 5.0):
    """Fit the power-phase line; returns ``(slope, intercept, indices)`` in (ln D, ln L)."""
    idx = detect_power_phase(sizes, losses, k=k, delta=delta)
    x, y = _log_xy(sizes, losses)
    if len(idx) == 1:
        return 0.0, float(y[idx[0]]), idx
    slope, intercept = np.polyfit(x[idx], y[idx], 1)
    return float(slope), float(intercept), idx


def extrapolate_power_phase(sizes, losses, target_size: float, *, k: int = 3, delta: float = 5.0):
    """AtS prediction of the loss at ``target_size`` (the power-phase line, extrapolated)."""
    slope, intercept, _ = fit_power_phase(sizes, losses, k=k, delta=delta)
    return float(np.exp(slope * np.log(target_size) + intercept))


def _log_xy(sizes, losses) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.asarray(sizes, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if sizes.shape != losses.shape or sizes.ndim != 1:
        raise ValueError("sizes and losses must be 1-D arrays of the same length")
    if len(sizes) == 0:
        raise ValueError("at least one point is needed")
    if np.any(sizes <= 0) or np.any(~np.isfinite(losses)) or np.any(losses <= 0):
        raise ValueError("phase detection needs positive sizes and positive, finite losses")
    if np.any(np.diff(sizes) <= 0):
        raise ValueError("sizes must be strictly increasing")
    return np.log(sizes), np.log(losses)


def power_phase_prediction(
    sizes,
    losses,
    target_size: float,
    *,
    k: int = 3,
    delta: float = 5.0,
    level: float = 0.9,
    noise_floor: float = NOISE_FLOOR,
) -> tuple[float, float, float]:
    """AtS prediction at ``target_size`` with a regression prediction interval.

    The interval is the ordinary least-squares prediction interval of the power-phase line in
    log space, ``t * s * sqrt(1 + 1/n + (x0 - mean x)^2 / Sxx)``, with ``s`` at least
    ``noise_floor`` and, for a line through two points (no residual degrees of freedom), ``s``
    set to ``noise_floor`` with a normal quantile. Returns ``(prediction, lower, upper)``.
    """
    from scipy.special import ndtri, stdtrit

    slope, intercept, idx = fit_power_phase(sizes, losses, k=k, delta=delta)
    x, y = _log_xy(sizes, losses)
    x, y = x[idx], y[idx]
    x0 = np.log(target_size)
    centre = slope * x0 + intercept
    n = len(x)
    if n < 2:
        return float(np.exp(centre)), float("nan"), float("nan")
    dof = n - 2
    resid = y - (slope * x + intercept)
    s = max(np.sqrt(np.sum(resid**2) / dof), noise_floor) if dof > 0 else noise_floor
    quantile = stdtrit(dof, 0.5 + level / 2) if dof > 0 else ndtri(0.5 + level / 2)
    sxx = np.sum((x - x.mean()) ** 2)
    half = quantile * s * np.sqrt(1 + 1 / n + (x0 - x.mean()) ** 2 / sxx)
    return float(np.exp(centre)), float(np.exp(centre - half)), float(np.exp(centre + half))


def local_slope_prediction(
    sizes, losses, target_size: float, *, level: float = 0.9, noise_floor: float = NOISE_FLOOR
) -> tuple[float, float, float]:
    """Extrapolate the log-log slope between the two largest sizes (the local power exponent).

    Fine-tuning curves steepen in log-log space as they leave the pre-power phase, so a line
    through earlier points is biased towards flatter slopes (higher predicted losses); the
    secant through the last two probes is the current estimate of the power-phase exponent.
    The interval widens with the change of slope between the last two secants (how much the
    curve still bends) times the log distance to the target, plus a noise floor.
    Returns ``(prediction, lower, upper)``.
    """
    from scipy.special import ndtri

    x, y = _log_xy(sizes, losses)
    if len(x) < 2:
        raise ValueError("the local slope needs at least two sizes")
    slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
    x0 = np.log(target_size)
    centre = y[-1] + slope * (x0 - x[-1])
    bend = 0.0
    if len(x) >= 3:
        bend = abs(slope - (y[-2] - y[-3]) / (x[-2] - x[-3]))
    half = bend * (x0 - x[-1]) + ndtri(0.5 + level / 2) * noise_floor * np.sqrt(2)
    return float(np.exp(centre)), float(np.exp(centre - half)), float(np.exp(centre + half))
