"""The extrapolation-error model: how wrong a selector's prediction is, learned across tasks.

A selector extrapolates each candidate's log loss from its probes to a target size ``H``
doublings beyond its largest probe. Its log error ``e = ln(true loss) - ln(prediction)`` is
modelled from what the selector can see, per predictor *family* (``FAMILIES``: the secant of
``Lens``'s local slope, the power-phase line of ``AtS``):

    g = (|s| + s0) * H ** gamma                     the error scale
    r = e / g                                       the standardised error

``s`` is the curve's local slope ``d ln L / d log2 D`` between the two largest probes read:
a curve that still falls fast has further to bend, so its extrapolation errs more (on the
published FLAN table and the zoo audits ``|e|`` grows like ``|s|^0.9 H^1.8``); ``s0`` keeps
the scale of a flat curve positive, ``gamma`` is the growth with the horizon. The standardised
errors of one *selection* (its candidates share data, recipe and target, so they share a bias
and a spread) follow the normal-inverse-gamma model of ``lens_model.error_prior``:

    r_i | mu, sigma^2 ~ N(mu, sigma^2),  mu | sigma^2 ~ N(m, sigma^2 / kappa),
    sigma^2 ~ Inv-Gamma(a, b).

A backtest error (the same predictor cut at a smaller origin, ``lens_model.calibration``) is
standardised by the same ``g`` with its own slope and horizon, and is one more ``r_i`` of the
group. So a selection's intervals are the prior ``(m, kappa, a, b)`` updated with its own
backtest errors by the conjugate update (``NormalInverseGamma.update``): with none or few of
its own errors an interval is the prior's, a long ladder's many errors dominate it, and a task
whose errors are larger than the prior expects widens its intervals itself.

Tasks differ, and not smoothly: on the shipped prior's tables the standardised errors of the
live audits (a few dozen examples per probe) are 2 to 4 times those of the published FLAN
table, and no curve feature tells them apart. One pooled prior can only say so with heavy
tails (``a`` at its bound of 1: Student-t with 2 df), too narrow at 50 % and too wide at 90 %
for every task. So the prior of a new selection is a *mixture* over the fitted tasks
(``FamilyPrior.components``): task ``k``'s own ``(m_k, kappa_k, a_k, b_k)``, each equally
likely a priori. The backtest updates each component by the conjugate update and re-weights
them by how likely each makes it,

    w_k  proportional to  p_k(r_1 .. r_n)        (the marginal likelihood; equal for n = 0),

so a selection without a backtest gets the even mixture, and one whose backtest looks like
task ``k`` gets mostly task ``k``. The pooled ``(m, kappa, a, b)`` is the prior of a model
without components (a fit on one task, or a file of version 1).

The fit sees horizons up to ``max_horizon`` (``FamilyPrior``); a selection whose target lies
further out gets intervals whose widening ``H ** gamma`` was never measured, and its
``interval_basis`` says so (``beyond_fitted_horizons``).

The predictive log loss of candidate ``i`` is ``ln(prediction_i) + g_i * t``, with ``t`` the
mixture of the components' Student-t's (``2 a_kn`` degrees of freedom, location ``m_kn``,
weights ``w_k``): its median, the reported point, is ``ln(prediction_i) + g_i t_50`` (a
measured bias moves it), and every central interval holds it. Decisions use the same joint
posterior: candidates share ``mu`` and ``sigma``, so within component ``k``

    z_i - z_j | sigma^2 ~ N(c_i - c_j + (g_i - g_j) m_kn,
                            sigma^2 ((g_i - g_j)^2 / kappa_kn + g_i^2 + g_j^2)),

with ``c`` the log predictions: ``P(i better than j)`` is the ``w_k``-weighted sum of Student-t
probabilities (exact), and ``P(i is best)`` a seeded Monte Carlo average over the same
posterior.

Fitting (``fit_family``): ``(gamma, s0, m, kappa, a, b)`` maximise the summed log marginal
likelihood of the *unstandardised* errors of many selections (each group: a selection's
backtest errors and its target errors), ``sum_groups ln p(r) - sum_i ln g_i`` (the Jacobian
of ``r = e / g`` makes ``gamma`` and ``s0`` identifiable). The prior's pseudo-counts are
capped by the number of tasks ``K`` it is fitted on: ``kappa <= 4 K`` and ``2 a <= 4 K``
(``PSEUDO_ERRORS_PER_TASK``). A table's many selections reuse its curves and share its bias
and spread, so a few tasks that agree drive an uncapped ``kappa`` and ``a`` to their bounds:
a prior that claims to know a new task's bias and spread exactly, which that task's own
backtest can then no longer move (fitted on the four live tables alone, ``a`` and ``kappa``
reach 1000, and FLAN's 90 % intervals held 97 % of its truths at twice the width its own
backtest of 30 curves supports). With the cap, a new task's backtest of ``n`` curves weighs
``n`` against at most ``4 K``. Each task's component is then fitted on that task's selections
alone, at the pooled ``gamma`` and ``s0``, with ``kappa_k`` and ``2 a_k`` capped at 24
(``COMPONENT_PSEUDO_ERRORS``, about one long ladder): within one task the selections agree,
and which task a new one is like is the mixture's uncertainty, not each component's. The cap
was chosen on the seven-table leave-one-table-out (``benchmarks/prior_pseudo_counts.py``
sweeps it). Pure numpy/scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import stdtr

from lens_model.error_prior import BOUNDS, NormalInverseGamma, StudentT, group_log_marginals
from lens_model.error_prior import fit_prior as fit_nig

FAMILIES = {
    "secant": "Lens's local slope: the secant of a curve's two largest probes, extrapolated",
    "line": "AtS's power-phase line (least squares through the largest probes), extrapolated",
}
GAMMA_BOUNDS = (0.25, 3.0)
SLOPE_FLOOR_BOUNDS = (1e-4, 1.0)
# The noise of a measured loss, in log space: no interval is narrower than this on either
# side of its median (``lens_model.calibration.NOISE_FLOOR``).
NOISE_FLOOR = 0.005
N_DRAWS = 20_000  # Monte Carlo draws of P(best): standard error below 0.004
# How many errors of a new selection one task of the fit is worth, at most (``fit_family``):
# about one live selection (three or four candidates, one error each).
PSEUDO_ERRORS_PER_TASK = 4
# How many errors of a new selection one task's own prior (a mixture component) is worth, at
# most: about one long ladder. Conditional on being like task k, a new task shares its spread
# well; which task it is like is the mixture's uncertainty (``fit_family``).
COMPONENT_PSEUDO_ERRORS = 24


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown predictor family {family!r}; known: {sorted(FAMILIES)}")
    return family


@dataclass(frozen=True)
class TaskComponent:
    """One fitted task's prior of a selection's standardised errors (``fit_family``)."""

    task: str
    prior: NormalInverseGamma
    n_groups: int = 0


@dataclass(frozen=True)
class FamilyPrior:
    """The error model of one predictor family: scale ``(|s| + slope_floor) * H ** gamma`` and
    the normal-inverse-gamma ``prior`` of a selection's standardised errors.

    ``n_groups`` and ``n_errors`` say how much data it was fitted on (0 when set by hand);
    ``max_horizon`` is the longest horizon among its errors (None when not known): past it,
    the growth ``H ** gamma`` is an extrapolation of the error model itself
    (``beyond_fitted_horizons``)."""

    gamma: float
    slope_floor: float
    prior: NormalInverseGamma
    n_groups: int = 0
    n_errors: int = 0
    components: tuple[TaskComponent, ...] = ()
    max_horizon: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma) and self.gamma > 0 and self.slope_floor > 0):
            raise ValueError(
                f"an error model needs gamma > 0 and slope_floor > 0, got gamma={self.gamma}, "
                f"slope_floor={self.slope_floor}"
            )
        object.__setattr__(self, "components", tuple(self.components))
        if self.max_horizon is not None and not (
            math.isfinite(self.max_horizon) and self.max_horizon > 0
        ):
            raise ValueError(f"max_horizon must be positive, got {self.max_horizon}")

    def task_priors(self) -> tuple[tuple[str, NormalInverseGamma], ...]:
        """What a new selection's errors may be like, one prior per earlier task (equally
        likely a priori): the fitted tasks' own priors, or the pooled ``prior`` alone."""
        if self.components:
            return tuple((c.task, c.prior) for c in self.components)
        return (("pooled", self.prior),)

    def scale(self, slopes, horizons) -> np.ndarray:
        """Error scale ``g`` of predictions ``horizons`` doublings beyond a probe where the
        curve's local slope (per doubling) is ``slopes``."""
        s = np.abs(np.asarray(slopes, dtype=float))
        h = np.asarray(horizons, dtype=float)
        with np.errstate(invalid="ignore"):
            return (s + self.slope_floor) * np.where(h > 0, h, np.nan) ** self.gamma

    def beyond_fitted_horizons(self, horizons) -> float | None:
        """The longest of ``horizons`` when it lies past every horizon the model was fitted on
        (there its widening with the horizon was never measured), else None."""
        h = np.asarray(horizons, dtype=float)
        h = h[np.isfinite(h)]
        if self.max_horizon is None or not h.size or h.max() <= self.max_horizon * (1 + 1e-9):
            return None
        return float(h.max())


@dataclass(frozen=True)
class ErrorModel:
    """A fitted error model per predictor family, and where it came from (``source``: in
    words, e.g. the prior file and its tables)."""

    families: Mapping[str, FamilyPrior]
    source: str = ""

    def __post_init__(self) -> None:
        for name in self.families:
            check_family(name)

    def family(self, name: str | None) -> FamilyPrior | None:
        """The family's prior, or None when the model has none for it."""
        return self.families.get(name) if name else None


@dataclass(frozen=True)
class ErrorGroup:
    """Errors of one selection (backtest and target errors alike) with their slopes, horizons
    and weights (``backtest_weights``): one group of the model. Entries with a non-finite
    error or slope or a non-positive horizon are dropped."""

    errors: np.ndarray
    slopes: np.ndarray
    horizons: np.ndarray
    weights: np.ndarray | None = None
    label: str = ""
    task: str = ""

    def __post_init__(self) -> None:
        names = ("errors", "slopes", "horizons", "weights")
        w = np.ones(np.size(self.errors)) if self.weights is None else self.weights
        arrays = [
            np.asarray(v, dtype=float).ravel() for v in (self.errors, self.slopes, self.horizons, w)
        ]
        if len({a.size for a in arrays}) != 1:
            raise ValueError("errors, slopes, horizons and weights of a group must have one length")
        ok = np.isfinite(arrays[0]) & np.isfinite(arrays[1]) & (arrays[2] > 0) & (arrays[3] > 0)
        for name, a in zip(names, arrays, strict=True):
            object.__setattr__(self, name, a[ok])


def backtest_weights(candidates) -> np.ndarray:
    """Weight of each backtest error: one over its candidate's count of errors. The errors of
    one curve cut at several origins are strongly correlated; together they count as one
    observation, so a long ladder does not claim a precision its few curves cannot give."""
    c = np.asarray(candidates, dtype=int).ravel()
    if c.size == 0:
        return np.zeros(0)
    _, inverse, counts = np.unique(c, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse.ravel()]


@dataclass(frozen=True)
class ErrorEvidence:
    """What a selection saw of its predictor's errors, in the terms of the model.

    Attributes
    ----------
    family : str
        The predictor family.
    backtest_errors, backtest_slopes, backtest_horizons : ndarray (n,)
        The selection's own backtest errors, the local slope at each cut and the horizon.
    backtest_candidates : ndarray of int (n,)
        Candidate of each backtest error.
    log_predictions, slopes, horizons : ndarray (N,)
        Each candidate's predicted log loss at the target (the predictor's own, before any
        bias), local slope and horizon; NaN where it has none.
    """

    family: str
    backtest_errors: np.ndarray
    backtest_slopes: np.ndarray
    backtest_horizons: np.ndarray
    backtest_candidates: np.ndarray
    log_predictions: np.ndarray
    slopes: np.ndarray
    horizons: np.ndarray

    def group(self, truth, label: str = "", task: str = "") -> ErrorGroup:
        """The selection's group: its backtest errors and its target errors against ``truth``
        (true losses at the target); ``task`` names the table it comes from."""
        with np.errstate(divide="ignore", invalid="ignore"):
            target = np.log(np.asarray(truth, dtype=float)) - self.log_predictions
        return ErrorGroup(
            np.concatenate([self.backtest_errors, target]),
            np.concatenate([self.backtest_slopes, self.slopes]),
            np.concatenate([self.backtest_horizons, self.horizons]),
            np.concatenate([backtest_weights(self.backtest_candidates), np.ones(target.size)]),
            label,
            task,
        )


# -- the posterior predictive ----------------------------------------------------------------
@dataclass(frozen=True)
class StudentTMixture:
    """A weighted mixture of Student-t distributions: the standardised error of one candidate
    when the selection's task may be like any of several earlier ones."""

    parts: tuple[StudentT, ...]
    weights: np.ndarray

    def cdf(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return sum(w * t.cdf(x) for w, t in zip(self.weights, self.parts, strict=True))

    def quantile(self, q) -> np.ndarray:
        """Quantiles by bisection on the cdf (to 1e-10 of the standardised error)."""
        q = np.atleast_1d(np.asarray(q, dtype=float))
        lo = np.full(q.shape, min(float(t.quantile(1e-12)) for t in self.parts))
        hi = np.full(q.shape, max(float(t.quantile(1 - 1e-12)) for t in self.parts))
        for _ in range(200):
            mid = (lo + hi) / 2
            below = self.cdf(mid) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            if np.max(hi - lo) < 1e-10:
                break
        return (lo + hi) / 2

    def interval(self, level: float) -> tuple[float, float]:
        """Central interval holding ``level`` of the probability."""
        lo, hi = self.quantile([(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    @property
    def median(self) -> float:
        if len(self.parts) == 1:
            return self.parts[0].median
        return float(self.quantile(0.5)[0])


@dataclass(frozen=True)
class PosteriorPredictive:
    """The candidates' log losses at the target under the posterior of their selection's error
    (module docstring): ``z_i = centre_i + scale_i * (mu + sigma eps_i)``, with ``(mu,
    sigma)`` from task prior ``k``'s posterior with probability ``weights[k]``.

    Attributes
    ----------
    centre : ndarray (N,)
        The predictor's log predictions (NaN: no prediction).
    scale : ndarray (N,)
        Error scales ``g_i`` at the target.
    posteriors : tuple of NormalInverseGamma
        Each task prior updated with the selection's backtest errors.
    weights : ndarray
        Posterior probability of each (sums to 1).
    tasks : tuple of str
        The task behind each posterior.
    seed : int
        Seed of the Monte Carlo behind ``p_best``.
    """

    centre: np.ndarray
    scale: np.ndarray
    posteriors: tuple[NormalInverseGamma, ...]
    weights: np.ndarray
    tasks: tuple[str, ...] = ()
    seed: int = 0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def rankable(self) -> np.ndarray:
        return np.isfinite(self.centre) & np.isfinite(self.scale) & (self.scale > 0)

    @property
    def n_errors(self) -> int:
        """Backtest errors the posteriors absorbed."""
        return self.posteriors[0].n

    @property
    def marginal(self) -> StudentTMixture:
        """The standardised error of one candidate (a mixture of Student-t's)."""
        if "marginal" not in self._cache:
            parts = tuple(p.predictive() for p in self.posteriors)
            self._cache["marginal"] = StudentTMixture(parts, np.asarray(self.weights))
        return self._cache["marginal"]

    def median(self) -> np.ndarray:
        """Median log loss: the reported point (the prediction moved by the posterior bias)."""
        return self.centre + self.scale * self.marginal.median

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Central ``level`` interval of each candidate's loss (loss units), holding the
        median +- ``NOISE_FLOOR`` at least."""
        lo_q, hi_q = self.marginal.interval(level)
        mid = self.median()
        lo = np.minimum(self.centre + self.scale * lo_q, mid - NOISE_FLOOR)
        hi = np.maximum(self.centre + self.scale * hi_q, mid + NOISE_FLOOR)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.exp(lo), np.exp(hi)

    def prob_better_matrix(self) -> np.ndarray:
        """``P[i, j] = P(z_i < z_j)``, exact under the joint posterior; 0.5 on the diagonal,
        NaN where either candidate has no prediction."""
        if "pairwise" not in self._cache:
            c, g = self.centre, self.scale
            dg = g[:, None] - g[None, :]
            p = np.zeros((len(c), len(c)))
            for weight, post in zip(self.weights, self.posteriors, strict=True):
                mean = c[:, None] - c[None, :] + dg * post.m  # E[z_i - z_j]
                var = dg**2 / post.kappa + g[:, None] ** 2 + g[None, :] ** 2
                with np.errstate(divide="ignore", invalid="ignore"):
                    p = p + weight * stdtr(2 * post.a, -mean / np.sqrt(post.b / post.a * var))
            ok = self.rankable[:, None] & self.rankable[None, :]
            p = np.where(ok, p, np.nan)
            np.fill_diagonal(p, np.where(self.rankable, 0.5, np.nan))
            self._cache["pairwise"] = p
        return self._cache["pairwise"].copy()

    def p_best(self) -> np.ndarray:
        """P(each candidate has the lowest loss at the target), seeded Monte Carlo over the
        joint posterior (``N_DRAWS`` draws); sums to 1 over the candidates with a prediction,
        NaN for the others."""
        if "p_best" not in self._cache:
            out = np.full(len(self.centre), np.nan)
            ok = self.rankable
            if ok.any():
                out[ok] = _p_best_draws(
                    self.centre[ok], self.scale[ok], self.posteriors, self.weights, self.seed
                )
            self._cache["p_best"] = out
        return self._cache["p_best"].copy()

    def basis(self) -> str:
        """What the predictive rests on, in words (the heaviest task priors)."""
        if len(self.posteriors) == 1:
            return f"Student-t with {2 * self.posteriors[0].a:.3g} df"
        order = np.argsort(-np.asarray(self.weights))[:3]
        top = ", ".join(f"{self.tasks[k]} {self.weights[k]:.2f}" for k in order)
        return (
            f"a mixture of {len(self.posteriors)} tasks' Student-t's weighted by how well "
            f"each explains the backtest ({top}{', ...' if len(self.posteriors) > 3 else ''})"
        )


def _p_best_draws(centre, scale, posteriors, weights, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if len(posteriors) == 1:
        which = np.zeros(N_DRAWS, dtype=int)
    else:
        which = rng.choice(len(posteriors), size=N_DRAWS, p=np.asarray(weights) / np.sum(weights))
    m, kappa, a, b = (
        np.array([getattr(p, k) for p in posteriors])[which] for k in ("m", "kappa", "a", "b")
    )
    var = b / rng.gamma(a, 1.0, N_DRAWS)
    mu = m + np.sqrt(var / kappa) * rng.standard_normal(N_DRAWS)
    eps = rng.standard_normal((N_DRAWS, len(centre)))
    z = centre[None, :] + scale[None, :] * (mu[:, None] + np.sqrt(var)[:, None] * eps)
    return np.bincount(np.argmin(z, axis=1), minlength=len(centre)) / N_DRAWS


def posterior_predictive(
    family: FamilyPrior, evidence: ErrorEvidence, *, seed: int = 0
) -> PosteriorPredictive:
    """Each of the family's task priors updated with the evidence's backtest errors, weighted
    by how likely it makes them (equal weights a priori), at the evidence's target slopes and
    horizons."""
    g_bt = family.scale(evidence.backtest_slopes, evidence.backtest_horizons)
    r = evidence.backtest_errors / g_bt
    ok = np.isfinite(r)
    weights = backtest_weights(evidence.backtest_candidates)[ok]
    tasks, priors = zip(*family.task_priors(), strict=True)
    log_evidence = np.array([p.log_marginal(r[ok], weights) for p in priors])
    w = np.exp(log_evidence - log_evidence.max())
    return PosteriorPredictive(
        centre=np.asarray(evidence.log_predictions, dtype=float),
        scale=family.scale(evidence.slopes, evidence.horizons),
        posteriors=tuple(p.update(r[ok], weights) for p in priors),
        weights=w / w.sum(),
        tasks=tuple(tasks),
        seed=seed,
    )


# -- fitting ---------------------------------------------------------------------------------
def _log_likelihood(params: np.ndarray, e, s, h, w, index, n, task_weight) -> float:
    """Weighted sum over groups of their log marginal likelihood of unstandardised errors;
    ``params`` are ``(gamma, ln s0, m, ln kappa, ln(a - 1), ln b)``."""
    gamma, log_s0 = params[0], params[1]
    g = (s + math.exp(log_s0)) * h**gamma
    r = e / g
    mean = np.bincount(index, weights=w * r, minlength=len(n)) / n
    ss = np.bincount(index, weights=w * (r - mean[index]) ** 2, minlength=len(n))
    jacobian = np.bincount(index, weights=w * np.log(g), minlength=len(n))
    per_group = group_log_marginals(params[2:], n, mean, ss) - jacobian
    return float(np.sum(task_weight * per_group))


def task_weights(groups: Sequence[ErrorGroup]) -> np.ndarray:
    """Weight of each group in the fit: one over its task's count of groups. The selections
    of one table reuse the same curves, so each table counts as one task, however many
    selections it offers (a 30-model published table would otherwise drown the audits)."""
    tasks = [g.task for g in groups]
    return np.array([1.0 / tasks.count(t) for t in tasks])


def pseudo_count_caps(
    n_tasks: int, per_task: float | None = PSEUDO_ERRORS_PER_TASK
) -> tuple[float, float]:
    """The largest ``(kappa, a)`` a prior fitted on ``n_tasks`` tasks may claim: it counts as
    at most ``per_task`` errors of a new selection per task, for the bias (``kappa``) and for
    the spread (``2 a``), within the fit's own ``BOUNDS`` (``per_task=None``: no cap)."""
    if per_task is None:
        return BOUNDS["kappa"][1], BOUNDS["a"][1]
    pseudo_errors = per_task * max(int(n_tasks), 1)
    kappa_max = min(BOUNDS["kappa"][1], float(pseudo_errors))
    a_max = min(BOUNDS["a"][1], max(pseudo_errors / 2.0, BOUNDS["a"][0] + 1e-3))
    return kappa_max, a_max


def fit_family(
    groups: Sequence[ErrorGroup],
    *,
    seed: int = 0,
    pseudo_errors_per_task: float | None = PSEUDO_ERRORS_PER_TASK,
    component_pseudo_errors: float | None = COMPONENT_PSEUDO_ERRORS,
    per_task: bool = True,
) -> FamilyPrior:
    """Maximum marginal likelihood ``(gamma, s0, m, kappa, a, b)`` over ``groups`` (module
    docstring): L-BFGS-B from a grid of starts in ``gamma`` and ``s0``, each started at the
    empirical-Bayes prior of its standardised errors, ``kappa`` and ``a`` capped by
    :func:`pseudo_count_caps` (``pseudo_errors_per_task``). Then, with ``per_task`` and two
    or more tasks, each task's own ``(m, kappa, a, b)`` at the pooled ``gamma`` and ``s0``,
    capped at ``component_pseudo_errors``: the mixture components. Deterministic given
    ``seed``.

    Raises
    ------
    ValueError
        Fewer than two non-empty groups.
    """
    groups = [g for g in groups if g.errors.size]
    if len(groups) < 2:
        raise ValueError(
            f"fitting an error model needs errors from at least two selections, got {len(groups)}"
        )
    e, s, h, w = (
        np.concatenate([getattr(g, k) for g in groups])
        for k in ("errors", "slopes", "horizons", "weights")
    )
    s = np.abs(s)
    index = np.concatenate([np.full(g.errors.size, k) for k, g in enumerate(groups)])
    n = np.bincount(index, weights=w)
    task_weight = task_weights(groups)
    kappa_max, a_max = pseudo_count_caps(len({g.task for g in groups}), pseudo_errors_per_task)
    bounds = [
        GAMMA_BOUNDS,
        tuple(math.log(v) for v in SLOPE_FLOOR_BOUNDS),
        BOUNDS["m"],
        (math.log(BOUNDS["kappa"][0]), math.log(kappa_max)),
        (math.log(BOUNDS["a"][0] - 1.0), math.log(a_max - 1.0)),
        tuple(math.log(v) for v in BOUNDS["b"]),
    ]
    best = None
    for gamma0 in (1.0, 1.5, 2.0):
        for s00 in (0.003, 0.03):
            r = e / ((s + s00) * h**gamma0)
            nig = fit_nig([r[index == k] for k in range(len(groups))], seed=seed, n_starts=2)
            start = [gamma0, math.log(s00), nig.m, math.log(nig.kappa)]
            start += [math.log(nig.a - 1.0), math.log(nig.b)]
            res = minimize(
                lambda p: -_log_likelihood(p, e, s, h, w, index, n, task_weight),
                np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds]),
                method="L-BFGS-B",
                bounds=bounds,
            )
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun - 1e-9):
                best = res
    gamma, log_s0 = (float(v) for v in best.x[:2])
    components = ()
    if per_task and len(set(tasks := [g.task for g in groups])) >= 2:
        # each task's own prior, at the pooled scale, capped as a fit on one task
        kappa_1, a_1 = pseudo_count_caps(1, component_pseudo_errors)
        task_bounds = [(gamma, gamma), (log_s0, log_s0), *bounds[2:]]
        task_bounds[3] = (task_bounds[3][0], math.log(kappa_1))
        task_bounds[4] = (task_bounds[4][0], math.log(a_1 - 1.0))
        parts = []
        for task in sorted(set(tasks)):
            keep = [k for k, t in enumerate(tasks) if t == task]
            rows = np.isin(index, keep)
            local = np.searchsorted(keep, index[rows])
            res = minimize(
                lambda p, rows=rows, local=local, keep=keep: (
                    -_log_likelihood(p, e[rows], s[rows], h[rows], w[rows], local, n[keep], 1.0)
                ),
                np.clip(best.x, [b[0] for b in task_bounds], [b[1] for b in task_bounds]),
                method="L-BFGS-B",
                bounds=task_bounds,
            )
            parts.append(TaskComponent(task, _nig(res.x[2:]), n_groups=len(keep)))
        components = tuple(parts)
    return FamilyPrior(
        gamma,
        math.exp(log_s0),
        _nig(best.x[2:]),
        n_groups=len(groups),
        n_errors=e.size,
        components=components,
        max_horizon=float(h.max()),
    )


def _nig(params) -> NormalInverseGamma:
    """The prior of fitted ``(m, ln kappa, ln(a - 1), ln b)``."""
    m, log_kappa, log_a1, log_b = (float(v) for v in params)
    return NormalInverseGamma(m, math.exp(log_kappa), 1.0 + math.exp(log_a1), math.exp(log_b))
