"""An error model learned across tasks: a normal-inverse-gamma prior on standardised log errors.

A selection sees too few of its own extrapolation errors (three candidates, one or two backtest
horizons) to support a 90 % interval. Earlier tasks have seen many. This module borrows their
strength by empirical Bayes (Gelman et al., *Bayesian Data Analysis*, 3rd ed., sections 3.3 and
5.3).

Model. A prediction's log error ``e = ln(observed) - ln(predicted)`` at a horizon of ``h``
doublings is standardised by the predictor's error scale, ``r = e / g(h)``. Within one group of
errors (one selection: the same data, recipe and target) the standardised errors are

    r_i | mu, sigma^2  ~  N(mu, sigma^2)                    (i = 1 .. n, independent)
    mu | sigma^2       ~  N(m, sigma^2 / kappa)             (the group's bias)
    sigma^2            ~  Inv-Gamma(a, b)                   (the group's spread)

with hyper-parameters ``theta = (m, kappa, a, b)`` shared by every group. After a group's own
errors ``r_1 .. r_n`` (mean ``rbar``, sum of squares about it ``S``), the posterior has

    kappa_n = kappa + n,   m_n = (kappa m + n rbar) / kappa_n,   a_n = a + n / 2,
    b_n = b + S / 2 + kappa n (rbar - m)^2 / (2 kappa_n),

and a new error of the group is Student-t with ``2 a_n`` degrees of freedom, location ``m_n``
and scale ``sqrt(b_n (kappa_n + 1) / (a_n kappa_n))``. The prior counts as ``2 a`` pseudo-errors
for the spread and ``kappa`` for the bias: with no error of its own (``n = 0``) a group gets the
prior's predictive; a group with many errors is dominated by them; a group whose errors are
larger than the prior expects pulls ``b_n`` and the interval wider.

Fitting. ``fit_prior`` maximises the sum over groups of the log marginal likelihood

    ln p(r_1..n) = ln G(a_n) - ln G(a) + a ln b - a_n ln b_n + (ln kappa - ln kappa_n) / 2
                   - (n / 2) ln(2 pi)

over ``theta`` (bounded, in log space where positive, from several starts; deterministic).
Groups with one error still inform ``m``, ``a`` and ``b``. Everything here is pure numpy/scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln, stdtr, stdtrit

# Bounds of the fitted hyper-parameters: a > 1 keeps the predictive variance finite; kappa and
# b are positive; the bias m is bounded to what a standardised error can reasonably be.
BOUNDS = {"m": (-5.0, 5.0), "kappa": (1e-3, 1e3), "a": (1.0 + 1e-3, 1e3), "b": (1e-6, 1e3)}


@dataclass(frozen=True)
class StudentT:
    """A location-scale Student-t distribution (``df`` degrees of freedom)."""

    df: float
    loc: float
    scale: float

    def quantile(self, q) -> np.ndarray:
        return self.loc + self.scale * stdtrit(self.df, np.asarray(q, dtype=float))

    def cdf(self, x) -> np.ndarray:
        return stdtr(self.df, (np.asarray(x, dtype=float) - self.loc) / self.scale)

    def interval(self, level: float) -> tuple[float, float]:
        """Central interval holding ``level`` of the probability."""
        lo, hi = self.quantile([(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    @property
    def median(self) -> float:
        return self.loc

    @property
    def sd(self) -> float:
        """Standard deviation (finite for ``df > 2``)."""
        if self.df <= 2:
            return math.inf
        return self.scale * math.sqrt(self.df / (self.df - 2))


@dataclass(frozen=True)
class NormalInverseGamma:
    """Normal-inverse-gamma distribution of a group's error mean and variance.

    Attributes
    ----------
    m, kappa, a, b : float
        Location, mean precision multiplier (pseudo-errors for the mean), shape (half the
        pseudo-errors for the spread) and rate.
    n : int
        Errors of the group absorbed so far (0 for a prior).
    """

    m: float
    kappa: float
    a: float
    b: float
    n: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.m) and self.kappa > 0 and self.a > 0 and self.b > 0):
            raise ValueError(
                f"a normal-inverse-gamma needs a finite m and positive kappa, a, b; got "
                f"m={self.m}, kappa={self.kappa}, a={self.a}, b={self.b}"
            )

    def update(self, errors, weights=None) -> NormalInverseGamma:
        """The posterior after the standardised ``errors`` (conjugate update).

        ``weights`` (default 1 each) count each error as that many observations: errors that
        are strongly correlated (one curve cut at several origins) share a weight of one, so
        that they count as the one piece of evidence they are (a power-likelihood update)."""
        r = _finite(errors)
        if r.size == 0:
            return self
        w = np.ones(r.size) if weights is None else np.asarray(weights, dtype=float).ravel()
        if w.shape != r.shape or not np.all(np.isfinite(w) & (w > 0)):
            raise ValueError("weights must be positive, finite and one per error")
        n = float(w.sum())
        mean = float(np.sum(w * r) / n)
        ss = float(np.sum(w * (r - mean) ** 2))
        kappa_n = self.kappa + n
        return NormalInverseGamma(
            m=(self.kappa * self.m + n * mean) / kappa_n,
            kappa=kappa_n,
            a=self.a + n / 2,
            b=self.b + ss / 2 + self.kappa * n * (mean - self.m) ** 2 / (2 * kappa_n),
            n=self.n + r.size,
        )

    def predictive(self) -> StudentT:
        """Distribution of one new standardised error of the group."""
        return StudentT(
            df=2 * self.a,
            loc=self.m,
            scale=math.sqrt(self.b * (self.kappa + 1) / (self.a * self.kappa)),
        )

    def log_marginal(self, errors, weights=None) -> float:
        """``ln p(errors)`` with the group's mean and variance integrated out; ``weights``
        count each error that many times, as in ``update`` (0 for no errors)."""
        r = _finite(errors)
        post = self.update(r, weights)
        n = r.size if weights is None else float(np.sum(weights))
        return float(
            gammaln(post.a)
            - gammaln(self.a)
            + self.a * math.log(self.b)
            - post.a * math.log(post.b)
            + 0.5 * (math.log(self.kappa) - math.log(post.kappa))
            - 0.5 * n * math.log(2 * math.pi)
        )


def _finite(errors) -> np.ndarray:
    r = np.asarray(errors, dtype=float).ravel()
    if not np.all(np.isfinite(r)):
        raise ValueError("standardised errors must be finite numbers (drop NaN and inf first)")
    return r


def _sufficient(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each group's size, mean and sum of squares about its mean."""
    n = np.array([g.size for g in groups], dtype=float)
    mean = np.array([g.mean() for g in groups])
    ss = np.array([np.sum((g - g.mean()) ** 2) for g in groups])
    return n, mean, ss


def _total_log_marginal(params: np.ndarray, n, mean, ss) -> float:
    """Summed log marginal likelihood of every group, vectorised over groups; ``params`` are
    ``(m, ln kappa, ln(a - 1), ln b)``."""
    return float(np.sum(group_log_marginals(params, n, mean, ss)))


def group_log_marginals(params: np.ndarray, n, mean, ss) -> np.ndarray:
    """Each group's log marginal likelihood from its size (or summed weight) ``n``, mean and
    sum of squares about it; ``params`` as in ``_total_log_marginal``."""
    m, log_kappa, log_a1, log_b = params
    kappa, a, b = math.exp(log_kappa), 1.0 + math.exp(log_a1), math.exp(log_b)
    kappa_n = kappa + n
    a_n = a + n / 2
    b_n = b + ss / 2 + kappa * n * (mean - m) ** 2 / (2 * kappa_n)
    return (
        gammaln(a_n)
        - gammaln(a)
        + a * log_b
        - a_n * np.log(b_n)
        + 0.5 * (log_kappa - np.log(kappa_n))
        - 0.5 * n * math.log(2 * math.pi)
    )


def fit_prior(groups: Sequence, *, seed: int = 0, n_starts: int = 8) -> NormalInverseGamma:
    """Empirical-Bayes hyper-parameters: the normal-inverse-gamma that maximises the summed
    log marginal likelihood of ``groups`` (each an array of one group's standardised errors).

    Parameters
    ----------
    groups : sequence of array-like
        At least two non-empty groups; the more groups, the better the spread between groups
        (which ``kappa`` and ``a`` measure) is determined.
    seed : int
        Seed of the random starts (the result is deterministic given it).
    n_starts : int
        Starts of the bounded optimiser, the first at a moment-matched guess.

    Raises
    ------
    ValueError
        Fewer than two non-empty groups, or non-finite errors.
    """
    data = [_finite(g) for g in groups]
    data = [g for g in data if g.size]
    if len(data) < 2:
        raise ValueError(
            f"fitting an error prior needs errors from at least two groups, got {len(data)}"
        )
    bounds = [
        BOUNDS["m"],
        tuple(math.log(v) for v in BOUNDS["kappa"]),
        tuple(math.log(v - 1.0) for v in BOUNDS["a"]),
        tuple(math.log(v) for v in BOUNDS["b"]),
    ]
    pooled = np.concatenate(data)
    var = max(float(pooled.var()), 1e-6)
    guess = np.array([float(pooled.mean()), 0.0, math.log(2.0), math.log(3.0 * var)])
    stats = _sufficient(data)
    rng = np.random.default_rng(seed)
    starts = [guess] + [
        np.array([rng.uniform(*b) for b in bounds]) for _ in range(max(n_starts - 1, 0))
    ]
    best = None
    for start in starts:
        start = np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds])
        res = minimize(
            lambda p: -_total_log_marginal(p, *stats), start, method="L-BFGS-B", bounds=bounds
        )
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    m, log_kappa, log_a1, log_b = best.x
    return NormalInverseGamma(
        float(m), math.exp(log_kappa), 1.0 + math.exp(log_a1), math.exp(log_b)
    )
