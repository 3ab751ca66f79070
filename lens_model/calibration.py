"""Calibrated predictive intervals and decision probabilities for loss extrapolations.

A selector predicts each candidate's loss at a target size far beyond its largest probe. How
wrong such an extrapolation is cannot be read off the fit itself (a line through five points
has a tiny residual and says nothing about how the curve bends beyond them), so the error is
learned from the data the selector read, by a **rolling-origin backtest**: each candidate's
curve is cut at every probe size (the *origin*), the selector's predictor is refitted on the
points up to the origin, and its errors on the larger probes are recorded with their
*horizon* ``h = log2(predicted size / origin)`` in doublings.

Errors grow with the horizon, and the real extrapolation (``H`` doublings, often 3 to 9) is
longer than any backtest horizon. The **growth assumption** is an error *scale* ``g(h)`` per
predictor: each backtest error is standardised to ``r = e / g(h)``, and the interval of a
prediction at horizon ``H`` is ``ln(prediction) + g(H) * [q_lo, q_hi]`` with ``q_lo, q_hi``
split-conformal quantiles of the pooled ``r`` of every candidate of the selection (they share
data, target and recipe), widened if need be to hold the prediction itself. Two scales:

* ``power_scale``, ``h ** 1.5``, for lines through several points (AtS) and law fits: between
  the two regimes an extrapolation error is made of, a wrong slope (``~ h``) and an unseen
  curvature (``~ h^2``);
* ``secant_scale``, ``h (h + w)``, for a secant through two probes ``w`` doublings apart (Lens's
  local slope): exactly the error a constant curvature of the log-log curve causes.

A backtest cannot pin the growth down itself: its short horizons are dominated by noise, and a
curve that keeps bending beyond the budget bends only a little inside it. These are fixed
structural assumptions, not fitted to any table: on rectified-law curves shaped like the
published fine-tuning tables they make backtest and target errors the same size, and the replay
benchmark and ``benchmarks/calibration_robustness.py`` measure what they give elsewhere.

Decision probabilities (``p_best``, ``P(i better than j)``) come from a Gaussian model of the
same standardised errors: the log loss of candidate ``i`` at the target is

    z_i = d_i + s_i * (c + u_i),   c ~ N(mu_c, sd_c^2) common,   u_i ~ N(0, sd_u^2) own,

with ``s_i = g(H_i)`` and ``d_i = m_i + b (m_i - mean m)`` the predicted log loss ``m_i``
moved by the backtest's regression to the mean ``b`` (the pooled within-group slope of the
errors on the predictions, in [-0.9, 0.5]: part of a predicted gap between two candidates is
extrapolation noise that does not materialise). Candidates of one selection share their data,
target size and recipe, so much of their error is common (``c``): it moves every prediction
together and does not change the order. ``sd_u`` is estimated from the spread of the backtest
errors *within* a group (one origin, one predicted size, all candidates), after the regression
to the mean; ``mu_c`` and ``sd_c`` from the group means. When every candidate has the same
horizon the common part cancels from every comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import log_ndtr, ndtr, ndtri, stdtrit

from lens_model.lines import pack_curves, power_phase_lines, secant_lines

DEFAULT_GROWTH = 1.5
# The noise of a measured loss, in log space (about 0.5 %): no interval is narrower than this
# on either side of its prediction, and a fit's residual scale never falls below it.
NOISE_FLOOR = 0.005
INTERVAL_METHODS = ("calibrated", "heuristic")


# -- validation ------------------------------------------------------------------------------
def check_level(level: float) -> float:
    """``level`` as a float in (0, 1), or a ``ValueError`` saying what is wrong."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"level must be in (0, 1) (e.g. 0.9 for a 90 % interval), got {level!r}")
    return value


def check_interval_method(interval: str) -> str:
    if interval not in INTERVAL_METHODS:
        raise ValueError(f"interval must be one of {INTERVAL_METHODS}, got {interval!r}")
    return interval


# -- growth of the error with the horizon ------------------------------------------------------
def power_scale(horizon, growth: float = DEFAULT_GROWTH) -> np.ndarray:
    """Error scale ``h ** growth`` of a line or law extrapolated ``h`` doublings."""
    return np.asarray(horizon, dtype=float) ** growth


def secant_scale(horizon, window) -> np.ndarray:
    """Error scale ``h (h + window)`` of a secant through two points ``window`` doublings apart
    extrapolated ``h`` doublings: what a constant curvature of the log-log curve makes of it
    (the secant has the slope of the curve's midpoint, ``window / 2`` behind the origin)."""
    h = np.asarray(horizon, dtype=float)
    return h * (h + np.asarray(window, dtype=float))


# -- backtests -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backtest:
    """Rolling-origin backtest errors of one predictor over the candidates of one selection.

    Attributes
    ----------
    errors : ndarray (n,)
        ``ln(observed loss) - ln(predicted loss)`` at a size above the origin.
    horizons : ndarray (n,)
        ``log2(predicted size / origin)``, in doublings (> 0).
    scales : ndarray (n,)
        The predictor's error scale at that horizon (``power_scale`` or ``secant_scale``).
    candidates : ndarray of int (n,)
        Candidate (row) of each error.
    groups : ndarray of int (n,)
        Errors with the same group share the origin and the predicted size.
    origins : ndarray (n,)
        ``log2`` of the origin (the largest size the cut curve kept).
    predictions : ndarray (n,)
        The predicted log loss.
    growth : str
        The growth model, in words.
    slopes : ndarray (n,) or None
        The cut curve's local slope ``d ln L / d log2 D`` between its two largest kept points
        (what ``lens_model.error_model`` scales errors with); None where not computed.
    """

    errors: np.ndarray
    horizons: np.ndarray
    scales: np.ndarray
    candidates: np.ndarray
    groups: np.ndarray
    origins: np.ndarray
    predictions: np.ndarray
    growth: str = ""
    slopes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.errors)

    @property
    def n_candidates(self) -> int:
        return len(np.unique(self.candidates))

    @classmethod
    def empty(cls, growth: str = "") -> Backtest:
        z = np.zeros(0)
        return cls(z, z, z, z.astype(int), z.astype(int), z, z, growth, z)


def _cuts(count: np.ndarray, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, points kept) of every cut that keeps >= ``min_points`` and leaves one beyond."""
    rows, kept = [], []
    for t in range(min_points, int(count.max(initial=0))):
        has = np.flatnonzero(count > t)
        rows.append(has)
        kept.append(np.full(len(has), t))
    if not rows:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    return np.concatenate(rows), np.concatenate(kept)


def _line_backtest(sizes, losses, lines, scale, growth: str) -> Backtest:
    """Cut every curve after each of its points (keeping >= 2), fit ``lines`` on the part kept
    and record the errors on the points beyond the cut; ``scale(h, window)`` is the error
    scale at horizon ``h`` of a fit whose last two points are ``window`` doublings apart."""
    x, y, count = pack_curves(sizes, losses)
    rows, kept = _cuts(count, 2)
    if len(rows) == 0:
        return Backtest.empty(growth)
    width = x.shape[1]
    keep = np.arange(width)[None, :] < kept[:, None]
    slope, icpt = lines(np.where(keep, x[rows], np.nan), np.where(keep, y[rows], np.nan), kept)
    pred = slope[:, None] * x[rows] + icpt[:, None]
    beyond = (~keep) & (np.arange(width)[None, :] < count[rows][:, None])
    origin, before = x[rows, kept - 1], x[rows, kept - 2]
    r, j = np.nonzero(beyond)
    horizon = (x[rows][r, j] - origin[r]) / LN2
    window = (origin[r] - before[r]) / LN2
    secant = (y[rows, kept - 1] - y[rows, kept - 2]) / ((origin - before) / LN2)
    return _backtest(
        errors=y[rows][r, j] - pred[r, j],
        predictions=pred[r, j],
        horizons=horizon,
        scales=scale(horizon, window),
        log2_origins=origin[r] / LN2,
        candidates=rows[r],
        growth=growth,
        slopes=secant[r],
    )


def _backtest(
    errors, predictions, horizons, scales, log2_origins, candidates, growth: str, slopes=None
) -> Backtest:
    ok = np.isfinite(errors) & (horizons > 0) & np.isfinite(scales) & (scales > 0)
    keys = np.stack([np.round(log2_origins[ok], 9), np.round(log2_origins[ok] + horizons[ok], 9)])
    groups = np.unique(keys.T, axis=0, return_inverse=True)[1].ravel() if ok.any() else keys[0]
    return Backtest(
        errors=errors[ok],
        horizons=horizons[ok],
        scales=scales[ok],
        candidates=np.asarray(candidates)[ok].astype(int),
        groups=np.asarray(groups, dtype=int),
        origins=log2_origins[ok],
        predictions=np.asarray(predictions, dtype=float)[ok],
        growth=growth,
        slopes=None if slopes is None else np.asarray(slopes, dtype=float)[ok],
    )


LN2 = math.log(2.0)
POWER_GROWTH = f"h^{DEFAULT_GROWTH:g}"
SECANT_GROWTH = "h (h + secant window)"


def backtest_power_phase(
    sizes, losses, *, k: int = 3, delta: float = 5.0, growth: float = DEFAULT_GROWTH
) -> Backtest:
    """Rolling-origin backtest of AtS's power-phase line (error scale ``h ** growth``).

    Parameters
    ----------
    sizes : array_like (m,)
        Data sizes of the columns of ``losses``; zero-shot (size 0) columns are ignored.
    losses : array_like (N, m)
        Losses a selector read (NaN where it read nothing).
    k, delta
        AtS settings.
    growth : float
        Exponent of the error scale.
    """

    def lines(x, y, c):
        return power_phase_lines(x, y, c, k=k, delta=delta)

    def scale(h, window):
        return power_scale(h, growth)

    return _line_backtest(sizes, losses, lines, scale, f"h^{growth:g}")


def backtest_local_slope(sizes, losses) -> Backtest:
    """Rolling-origin backtest of the local-slope extrapolation (secant of the last two
    points) on each candidate's own probes (NaN where a candidate was not probed); error
    scale ``secant_scale``."""
    return _line_backtest(sizes, losses, secant_lines, secant_scale, SECANT_GROWTH)


def backtest_refits(
    refit, sizes, losses, *, min_points: int, zero_shot: bool, growth: float = DEFAULT_GROWTH
) -> Backtest:
    """Rolling-origin backtest of a model that is refitted on cut curves (a law fit): one
    algorithm, kept in one function.

    For every origin size ``o`` (a positive size some curves were read at), the curves read at
    ``o`` that keep at least ``min_points`` points up to ``o`` and have a point beyond it are
    cut after ``o`` and refitted together in one batch; their errors at the larger sizes are
    recorded with error scale ``h ** growth``.

    Parameters
    ----------
    refit : callable
        ``refit(kept_sizes, kept_losses, rows)`` fits the model to the cut curves ``rows``
        (``kept_losses`` has the columns ``kept_sizes <= o`` only, so a cut of every curve is
        exactly the fit a selector makes at budget ``o``) and returns their predicted losses at
        every size of ``sizes``, shape (len(rows), m); NaN where it has no prediction.
    sizes : array_like (m,)
        Increasing column sizes (0 = zero-shot).
    losses : array_like (N, m)
        Losses read (NaN = not read).
    min_points : int
        Fewest points a cut curve keeps (the zero-shot point counts when ``zero_shot``).
    zero_shot : bool
        Whether the model uses the zero-shot point.
    growth : float
        Exponent of the error scale.
    """
    sizes = np.asarray(sizes, dtype=float)
    losses = np.atleast_2d(np.asarray(losses, dtype=float))
    read = np.isfinite(losses)
    usable = read & ((sizes > 0) | zero_shot)[None, :]
    positive = read & (sizes > 0)[None, :]
    parts = []
    for j in np.flatnonzero(sizes > 0):
        o = sizes[j]
        enough = usable[:, sizes <= o].sum(axis=1) >= min_points
        rows = np.flatnonzero(positive[:, j] & enough & positive[:, sizes > o].any(axis=1))
        if len(rows) == 0:
            continue
        kept = sizes <= o
        predicted = np.asarray(refit(sizes[kept], losses[np.ix_(rows, kept)], rows), dtype=float)
        beyond = (sizes[None, :] > o) & read[rows]
        r, c = np.nonzero(beyond)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_pred = np.log(predicted[r, c])
        horizons = np.log2(sizes[c] / o)
        parts.append((np.log(losses[rows[r], c]) - log_pred, log_pred, horizons, rows[r], o))
    if not parts:
        return Backtest.empty(f"h^{growth:g}")
    errors, log_pred, horizons, cand, origin = (
        np.concatenate([p[k] if k < 4 else np.full(len(p[0]), np.log2(p[4])) for p in parts])
        for k in range(5)
    )
    return _backtest(
        errors=errors,
        predictions=log_pred,
        horizons=horizons,
        scales=power_scale(horizons, growth),
        log2_origins=origin,
        candidates=cand,
        growth=f"h^{growth:g}",
    )


# -- the calibrator --------------------------------------------------------------------------
MIN_ERRORS = 2  # fewer backtest errors than this: no calibrated interval (the caller says so)
MIN_SHRINKAGE_DOF = 10  # within-group degrees of freedom needed to estimate the shrinkage
SHRINKAGE_BOUNDS = (-0.9, 0.5)  # never reverse (nor more than 1.5x stretch) predicted gaps


class IntervalCalibrator:
    """Conformal intervals of log-loss extrapolations, scaled to their horizon.

    ``fit`` learns the standardised backtest errors ``r = e / scale``; an interval is then
    ``ln(prediction) + scale * [q_lo, q_hi]`` with ``scale`` the predictor's error scale at the
    prediction's horizon, widened if need be to hold the prediction +- ``NOISE_FLOOR``.

    The quantiles are split-conformal (order statistics ``floor((n + 1) alpha / 2)`` and
    ``ceil((n + 1)(1 - alpha / 2))`` of the ``n`` scores). With too few scores for those at the
    requested level, a Student-t interval on the scores (``n - 1`` degrees of freedom) is used
    instead, and ``basis_`` says so.

    Parameters
    ----------
    symmetric : bool
        False (default): the interval is ``[q_lo, q_hi]`` of the signed scores, so it keeps
        the backtest's bias (a predictor that tends to overshoot gets an interval mostly below
        its prediction). True: +- the ``level`` quantile of ``|r|`` (robust to a bias that
        changes sign beyond the budget, but wider where the bias is consistent).

    Attributes
    ----------
    scores_ : ndarray
        Standardised backtest errors, sorted.
    n_errors_, n_candidates_ : int
        Backtest size.
    min_horizon_, max_horizon_ : float
        Shortest and longest backtest horizons (doublings).
    shrinkage_ : float
        Regression-to-the-mean slope of the decision model (0 when not estimable).
    common_mean_, common_sd_, independent_sd_ : float
        The decision model's common and own parts of the standardised error.
    growth_ : str
        The backtest's growth model.
    """

    def __init__(self, *, symmetric: bool = False) -> None:
        self.symmetric = symmetric

    def fit(self, backtest: Backtest) -> IntervalCalibrator:
        """Learn from ``backtest`` (at least ``MIN_ERRORS`` errors, else ``ValueError``)."""
        if len(backtest) < MIN_ERRORS:
            raise ValueError(
                f"a calibrated interval needs at least {MIN_ERRORS} backtest errors, got "
                f"{len(backtest)}: probe more sizes per candidate"
            )
        r = backtest.errors / backtest.scales
        self.scores_ = np.sort(r)
        self.n_errors_ = len(r)
        self.n_candidates_ = backtest.n_candidates
        self.min_horizon_ = float(backtest.horizons.min())
        self.max_horizon_ = float(backtest.horizons.max())
        self.growth_ = backtest.growth
        self._decision_model(backtest)
        return self

    def _decision_model(self, bt: Backtest) -> None:
        """Shrinkage, common and independent parts from the backtest's groups (one origin and
        one predicted size each)."""
        _, inverse, counts = np.unique(bt.groups, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()

        def centred(v):
            return v - (np.bincount(inverse, weights=v) / counts)[inverse]

        dm, de = centred(bt.predictions), centred(bt.errors)
        dof = float(np.sum(counts - 1))
        shrink = 0.0
        if dof >= MIN_SHRINKAGE_DOF and np.sum(dm * dm) > 0:
            shrink = float(np.clip(np.sum(dm * de) / np.sum(dm * dm), *SHRINKAGE_BOUNDS))
        self.shrinkage_ = shrink
        r = bt.errors / bt.scales
        means = np.bincount(inverse, weights=r) / counts
        if dof >= 1:
            resid = (de - shrink * dm) / bt.scales
            self.independent_sd_ = math.sqrt(float(np.sum(resid**2)) / dof)
            self.common_mean_ = float(np.average(means, weights=counts))
            self.common_sd_ = float(np.std(means, ddof=1)) if len(means) >= 2 else 0.0
        else:  # one candidate per group: nothing separates common from own error
            self.independent_sd_ = float(np.std(r, ddof=1))
            self.common_mean_, self.common_sd_ = float(np.mean(r)), 0.0

    def score_quantiles(self, level: float) -> tuple[float, float, str]:
        """``(q_lo, q_hi, how)``: bounds of the standardised error at ``level``; ``how`` is
        ``"conformal"`` or ``"t"`` (too few errors for the conformal order statistics)."""
        level = check_level(level)
        self._check_fitted()
        r, n = self.scores_, self.n_errors_
        alpha = 1.0 - level
        if self.symmetric:
            k = _rank_up((n + 1) * level)
            if k <= n:
                q = float(np.sort(np.abs(r))[k - 1])
                return -q, q, "conformal"
            q = _t_half_width(np.abs(r), level, centre=0.0)
            return -q, q, "t"
        k_lo = _rank_down((n + 1) * alpha / 2)
        k_hi = _rank_up((n + 1) * (1 - alpha / 2))
        if k_lo >= 1 and k_hi <= n:
            return float(r[k_lo - 1]), float(r[k_hi - 1]), "conformal"
        centre = float(np.mean(r))
        q = _t_half_width(r, level, centre=centre)
        return centre - q, centre + q, "t"

    def interval(self, log_centre, scale, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Log-space interval ``log_centre + scale * [q_lo, q_hi]``, holding ``log_centre``
        +- ``NOISE_FLOOR`` at least."""
        q_lo, q_hi, _ = self.score_quantiles(level)
        centre = np.asarray(log_centre, dtype=float)
        scale = np.asarray(scale, dtype=float)
        lo = np.minimum(centre + scale * q_lo, centre - NOISE_FLOOR)
        hi = np.maximum(centre + scale * q_hi, centre + NOISE_FLOOR)
        return lo, hi

    def basis(self, level: float) -> str:
        """What an interval at ``level`` rests on, in words."""
        how = self.score_quantiles(level)[2]
        quantiles = (
            "conformal quantiles"
            if how == "conformal"
            else f"a Student-t interval (too few errors for conformal quantiles at {level:g})"
        )
        return (
            f"calibrated: {quantiles} of a backtest of {self.n_errors_} errors from "
            f"{self.n_candidates_} candidate(s), horizons up to {self.max_horizon_:.3g} "
            f"doublings, error growth {self.growth_}"
        )

    def predictive(self, log_centre, scale) -> Predictive:
        """Predictive distributions of predictions ``log_centre`` with error ``scale``."""
        self._check_fitted()
        return Predictive(
            centre=np.asarray(log_centre, dtype=float),
            scale=np.asarray(scale, dtype=float),
            shrinkage=self.shrinkage_,
            common_mean=self.common_mean_,
            common_sd=self.common_sd_,
            independent_sd=self.independent_sd_,
            calibrator=self,
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            raise RuntimeError("this IntervalCalibrator is not fitted yet: call fit() first")


def _rank_down(x: float) -> int:
    """floor, robust to rounding (0.1 * 50 computed as 4.9999... is rank 5)."""
    return math.floor(x + 1e-9)


def _rank_up(x: float) -> int:
    return math.ceil(x - 1e-9)


def _t_half_width(values: np.ndarray, level: float, *, centre: float) -> float:
    """Half-width of a normal prediction interval for a new value (Student t, n - 1 degrees
    of freedom), for backtests too small for conformal quantiles at ``level``."""
    n = len(values)
    sd = math.sqrt(float(np.sum((values - centre) ** 2)) / max(n - 1, 1))
    return float(stdtrit(max(n - 1, 1), 0.5 + level / 2) * sd * math.sqrt(1 + 1 / n))


# -- predictive distributions and decision probabilities ------------------------------------
@dataclass(frozen=True)
class Predictive:
    """Predictive distributions of the candidates' log losses at the target size.

    Intervals come from the calibrator's quantiles (``interval``). Decisions (``p_best``,
    ``prob_better_matrix``) use the Gaussian model of the module docstring:

        z_i = d_i + scale_i * (c + u_i),  c ~ N(common_mean, common_sd^2),
        u_i ~ N(0, independent_sd^2) independent,

    with ``d_i = centre_i + shrinkage * (centre_i - mean of the centres)``: the backtest's
    regression to the mean (part of a predicted gap between two candidates is extrapolation
    noise that does not materialise). ``shrinkage`` is bounded in (-1, 0.5], so the expected
    order of two candidates at the same horizon is their predicted order. Candidates with a
    NaN centre or scale have no prediction: NaN probabilities, left out of ``p_best``.

    Attributes
    ----------
    centre : ndarray (N,)
        Predicted log loss (the point prediction).
    scale : ndarray (N,)
        Scale of each candidate's error (the predictor's error scale at its horizon for a
        calibrated model; the normal standard deviation for a heuristic one).
    shrinkage, common_mean, common_sd, independent_sd : float
        The decision model.
    calibrator : IntervalCalibrator or None
        Source of the interval quantiles; None: normal quantiles (heuristic model).
    """

    centre: np.ndarray
    scale: np.ndarray
    shrinkage: float = 0.0
    common_mean: float = 0.0
    common_sd: float = 0.0
    independent_sd: float = 1.0
    calibrator: IntervalCalibrator | None = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def rankable(self) -> np.ndarray:
        return np.isfinite(self.centre) & np.isfinite(self.scale) & (self.scale > 0)

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Central ``level`` interval of each candidate's loss (loss units, NaN without a
        prediction). Heuristic models use normal quantiles."""
        level = check_level(level)
        if self.calibrator is not None:
            lo, hi = self.calibrator.interval(self.centre, self.scale, level)
        else:
            half = float(ndtri(0.5 + level / 2)) * self.scale
            lo, hi = self.centre - half, self.centre + half
        with np.errstate(over="ignore", invalid="ignore"):
            return np.exp(lo), np.exp(hi)

    def decision_centre(self) -> np.ndarray:
        ok = self.rankable
        if not ok.any() or self.shrinkage == 0.0:
            return self.centre.copy()
        return self.centre + self.shrinkage * (self.centre - self.centre[ok].mean())

    def prob_better_matrix(self) -> np.ndarray:
        """``P[i, j] = P(z_i < z_j)``: candidate i reaches a lower loss than j. The diagonal
        is 0.5, ``P + P.T = 1`` wherever both have a prediction, NaN elsewhere."""
        if "pairwise" not in self._cache:
            m, s = self.decision_centre(), self.scale
            ds = s[:, None] - s[None, :]
            diff = (m[None, :] - m[:, None]) - self.common_mean * ds  # E[z_j - z_i]
            var = self.common_sd**2 * ds**2 + self.independent_sd**2 * (
                s[:, None] ** 2 + s[None, :] ** 2
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                p = ndtr(diff / np.sqrt(var))
            p = np.where(var > 0, p, 0.5 * (1 + np.sign(diff)))
            ok = self.rankable[:, None] & self.rankable[None, :]
            p = np.where(ok, p, np.nan)
            np.fill_diagonal(p, np.where(self.rankable, 0.5, np.nan))
            self._cache["pairwise"] = p
        return self._cache["pairwise"].copy()

    def p_best(self) -> np.ndarray:
        """Probability that each candidate has the lowest loss at the target: sums to 1 over
        the candidates with a prediction, NaN for the others.

        Exact for the Gaussian model up to quadrature: independent normals integrated on a
        grid, for each node of a Gauss-Hermite rule over the common part (one node when every
        candidate has the same scale, where the common part cannot change the order).
        """
        if "p_best" not in self._cache:
            self._cache["p_best"] = _p_best(self)
        return self._cache["p_best"].copy()


def _p_best(pred: Predictive) -> np.ndarray:
    out = np.full(len(pred.centre), np.nan)
    ok = pred.rankable
    if not ok.any():
        return out
    m, s = pred.decision_centre()[ok], pred.scale[ok]
    if len(m) == 1:
        out[ok] = 1.0
        return out
    if pred.common_sd > 0 and not np.allclose(s, s[0], rtol=1e-12):
        nodes, weights = np.polynomial.hermite_e.hermegauss(24)
        weights = weights / weights.sum()
    else:
        nodes, weights = np.zeros(1), np.ones(1)
    total = np.zeros(len(m))
    for node, weight in zip(nodes, weights, strict=True):
        means = m + s * (pred.common_mean + pred.common_sd * node)
        total += weight * _p_min_independent(means, s * pred.independent_sd)
    out[ok] = total / total.sum()
    return out


def _p_min_independent(means: np.ndarray, sds: np.ndarray, upper: float = math.inf) -> np.ndarray:
    """P(candidate i is the minimum, and below ``upper``) of independent normals; a zero
    ``sds`` is a point mass (two identical candidates have no spread between them): the
    lowest point masses share what the normals leave below them."""
    zero = sds <= 0
    if zero.any():
        x0 = float(np.min(means[zero]))
        out = np.zeros(len(means))
        if (~zero).any():
            out[~zero] = _p_min_independent(means[~zero], sds[~zero], min(x0, upper))
        first = zero & (means == x0)
        out[first] = (1.0 - out.sum()) / first.sum() if x0 <= upper else 0.0
        return out
    # the minimum lies below every candidate's mean + 8.5 sd with probability 1 - 1e-17
    hi = min(float(np.min(means + 8.5 * sds)), upper)
    lo = float(np.min(means - 8.5 * sds))
    if hi <= lo:
        return np.zeros(len(means))
    n = int(min(max((hi - lo) / (float(np.min(sds)) / 10.0), 400), 20000)) + 1
    grid = np.linspace(lo, hi, n)
    zs = (grid[None, :] - means[:, None]) / sds[:, None]
    log_sf = log_ndtr(-zs)  # log P(z_j > x)
    log_pdf = -0.5 * zs**2 - np.log(sds[:, None] * math.sqrt(2 * math.pi))
    dens = np.exp(log_pdf + log_sf.sum(axis=0)[None, :] - log_sf)
    return np.trapezoid(dens, grid, axis=1)


def heuristic_predictive(predictions, lower, upper, level: float) -> Predictive:
    """Independent normals in log space that reproduce central ``level`` intervals (the model
    of heuristic intervals, which carry no backtest)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = np.log(np.asarray(predictions, dtype=float))
        lo = np.log(np.asarray(lower, dtype=float))
        hi = np.log(np.asarray(upper, dtype=float))
    z = float(ndtri(0.5 + check_level(level) / 2))
    return Predictive(centre=centre, scale=(hi - lo) / (2 * z))


# -- scores ----------------------------------------------------------------------------------
def interval_score(lower, upper, truth, level: float) -> np.ndarray:
    """Interval score of central ``level`` intervals (Gneiting & Raftery 2007), elementwise:
    ``(u - l) + (2 / alpha) (l - y) [y < l] + (2 / alpha) (y - u) [y > u]``, alpha = 1 - level.
    Lower is better. Pass log losses to score in log space."""
    alpha = 1.0 - check_level(level)
    lo, hi, y = (np.asarray(v, dtype=float) for v in (lower, upper, truth))
    return (hi - lo) + (2 / alpha) * np.maximum(lo - y, 0) + (2 / alpha) * np.maximum(y - hi, 0)


def coverage(lower, upper, truth) -> float:
    """Share of intervals that hold the truth (NaN entries are left out)."""
    lo, hi, y = (np.asarray(v, dtype=float) for v in (lower, upper, truth))
    ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(y)
    return float(np.mean((lo[ok] <= y[ok]) & (y[ok] <= hi[ok]))) if ok.any() else float("nan")


def pairwise_outcomes(prob: np.ndarray, truth) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair ``i != j`` with a probability: ``(P(i better than j), 1 if i's true
    loss is lower else 0)``. Pairs whose true losses tie are left out."""
    y = np.asarray(truth, dtype=float)
    i, j = np.nonzero(~np.eye(len(y), dtype=bool) & np.isfinite(prob))
    keep = y[i] != y[j]
    i, j = i[keep], j[keep]
    return prob[i, j], (y[i] < y[j]).astype(float)


def reliability(prob, outcome, n_bins: int = 10) -> dict:
    """Binned reliability of probabilities: per bin the count, mean probability and observed
    frequency, plus the expected calibration error and the Brier score.

    Returns
    -------
    dict
        ``bins`` (list of dicts with ``low, high, count, mean_probability, observed``),
        ``ece`` (sum over bins of count / total * |mean probability - observed|), ``brier``.
    """
    p, o = np.asarray(prob, dtype=float), np.asarray(outcome, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        mean_p = float(p[sel].mean()) if count else float("nan")
        freq = float(o[sel].mean()) if count else float("nan")
        if count:
            ece += count / len(p) * abs(mean_p - freq)
        bins.append(
            {
                "low": edges[b],
                "high": edges[b + 1],
                "count": count,
                "mean_probability": mean_p,
                "observed": freq,
            }
        )
    brier = float(np.mean((p - o) ** 2)) if len(p) else float("nan")
    return {"bins": bins, "ece": float(ece) if len(p) else float("nan"), "brier": brier}
