"""Batched, bounded nonlinear least squares used by the laws.

Every law is fitted in log space (x = ln D, y = ln L) by Levenberg-Marquardt on an
unconstrained parametrisation (bounds are built into the transforms), from several starting
points, for many curves at once: one numpy call advances all (curve, start) problems together,
which is what makes fitting 30 models x 7 budgets x several laws take well under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ResidualFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class LeastSquaresResult:
    """Solution of a batch of problems.

    Attributes
    ----------
    theta : ndarray, shape (K, p)
        Unconstrained parameters at the end of the iterations.
    cost : ndarray, shape (K,)
        Half the sum of squared residuals.
    converged : ndarray of bool, shape (K,)
        Whether the relative cost decrease fell below the tolerance before ``max_iter``.
    n_iter : int
        Iterations performed (the batch runs until every problem converged or ``max_iter``).
    """

    theta: np.ndarray
    cost: np.ndarray
    converged: np.ndarray
    n_iter: int


def numeric_jacobian(residuals: ResidualFn, theta: np.ndarray, r0: np.ndarray) -> np.ndarray:
    """Forward-difference Jacobian of ``residuals`` at ``theta`` (batched), shape (K, m, p)."""
    k, p = theta.shape
    step = 1e-6 * (1.0 + np.abs(theta))
    jac = np.empty((k, r0.shape[1], p))
    for j in range(p):
        shifted = theta.copy()
        shifted[:, j] += step[:, j]
        jac[:, :, j] = (residuals(shifted) - r0) / step[:, j, None]
    return jac


def levenberg_marquardt(
    residuals: ResidualFn,
    theta0: np.ndarray,
    *,
    max_iter: int = 500,
    tol: float = 1e-9,
    jacobian: ResidualFn | None = None,
) -> LeastSquaresResult:
    """Minimise ``0.5 * sum(residuals(theta)**2, axis=1)`` for a batch of independent problems.

    One algorithm (batched Levenberg-Marquardt with per-problem damping), kept in one
    function.

    Parameters
    ----------
    residuals : callable
        ``residuals(theta, rows)`` maps parameters of shape (len(rows), p) of the problems
        ``rows`` (an index array; all problems when omitted) to residuals (len(rows), m).
        Non-finite residuals make a step unacceptable (the damping grows), so bounds encoded
        by the parametrisation hold.
    theta0 : ndarray, shape (K, p)
        Starting points.
    max_iter : int
        Iteration cap.
    tol : float
        Relative cost decrease under which a problem counts as converged.
    jacobian : callable, optional
        ``jacobian(theta, rows)``: the residuals' Jacobian, shape (len(rows), m, p). Without it,
        forward differences (p more residual evaluations per iteration).
    """
    theta = np.array(theta0, dtype=float, copy=True)
    k, p = theta.shape
    r = residuals(theta)
    cost = _half_sq(r)
    damping = np.full(k, 1e-3)
    converged = ~np.isfinite(cost)  # a start outside the law's domain is dropped at once
    eye = np.eye(p)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        # Only problems still running are evaluated: most starts settle in a few dozen steps.
        act = np.flatnonzero(~converged)
        if act.size == 0:
            break
        res_act = _restrict(residuals, act)
        th, r_a, cost_a, damp = theta[act], r[act], cost[act], damping[act]
        if jacobian is None:
            jac = numeric_jacobian(res_act, th, r_a)
        else:
            jac = jacobian(th, act)
        jac = np.where(np.isfinite(jac), jac, 0.0)
        jac_t = jac.transpose(0, 2, 1)
        jtj = jac_t @ jac
        grad = (jac_t @ r_a[:, :, None])[:, :, 0]
        diag = np.einsum("kii->ki", jtj)
        system = jtj + (damp[:, None] * (diag + 1e-9))[:, :, None] * eye
        try:
            step = -np.linalg.solve(system, grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = -grad / (np.einsum("kii->ki", system) + 1e-12)
        trial = th + step
        r_trial = res_act(trial)
        cost_trial = _half_sq(r_trial)
        better = cost_trial <= cost_a
        rel_drop = (cost_a - cost_trial) / np.maximum(cost_a, 1e-300)
        small_step = np.max(np.abs(step), axis=1) < 1e-10 * (1.0 + np.max(np.abs(th), axis=1))
        done = (better & (rel_drop < tol)) | small_step | (cost_trial == 0.0)
        theta[act[better]] = trial[better]
        r[act[better]] = r_trial[better]
        cost[act] = np.where(better, cost_trial, cost_a)
        damping[act] = np.where(better, damp / 3.0, damp * 4.0)
        # A damping this large means no descent direction is left: a (local) minimum.
        converged[act] = done | (damping[act] > 1e12)
    return LeastSquaresResult(theta=theta, cost=cost, converged=converged, n_iter=it)


def _restrict(residuals: ResidualFn, rows: np.ndarray) -> ResidualFn:
    """The residual function of a subset of the batch (the callers' arrays are row-aligned)."""
    return lambda theta: residuals(theta, rows)


def _half_sq(r: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        c = 0.5 * np.sum(r * r, axis=1)
    return np.where(np.isfinite(c), c, np.inf)


def best_of_starts(cost: np.ndarray, n_curves: int, n_starts: int) -> np.ndarray:
    """Index (into the flattened batch) of the lowest-cost start of each curve."""
    per_curve = cost.reshape(n_curves, n_starts)
    return np.arange(n_curves) * n_starts + np.argmin(per_curve, axis=1)


def sigmoid(u: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * u))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)
