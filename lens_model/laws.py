"""Fine-tuning scaling laws: test loss L as a function of fine-tuning data size D.

* ``VanillaLaw``:   L(D) = B / D^beta + E
* ``RectifiedLaw``: L(D) = B / (D_l + D^beta) + E            (Lin et al., ICML 2024)
* ``LensLaw``:      L(D) = B / (F(Theta, t) + D^beta) + E    (Zeng et al., ICML 2025)

All laws are fitted in log space (x = ln D, y = ln L) by batched Levenberg-Marquardt from a
deterministic grid of starts plus seeded random ones. ``fit`` accepts one curve (1-D losses) or
many curves at once (2-D losses, one row per model); NaN losses are ignored. Fitted attributes
end with ``_``. A fit that does not converge emits a ``FitWarning`` and is flagged in
``converged_``; its parameters are the best found, never a substitute value.

``predict_interval`` gives a delta-method interval (``method="delta"``, the default) or a
calibrated one (``method="calibrated"``): the law refitted on its own curves cut after each
size, its errors on the sizes beyond the cut scaled to the prediction's horizon
(``lens_model.calibration``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from lens_model.calibration import (
    NOISE_FLOOR,
    IntervalCalibrator,
    backtest_refits,
    check_level,
    power_scale,
)
from lens_model.fitting import best_of_starts, levenberg_marquardt, logit, numeric_jacobian, sigmoid
from lens_model.lookup import Registry

LAWS: Registry[type[ScalingLaw]] = Registry("law")

BETA_MAX = 2.0  # data-size exponents of fine-tuning curves lie well below this
ZERO_SIZE = 1e-10  # where a zero-shot point sits on the log axis (the published convention)


class FitWarning(UserWarning):
    """A law fit did not converge; the result is flagged in ``converged_``."""


@dataclass(frozen=True)
class _Curves:
    x: np.ndarray  # (N, m) ln D
    y: np.ndarray  # (N, m) ln L, 0 where masked
    w: np.ndarray  # (N, m) 1 for a used point, 0 for a masked one
    floor: np.ndarray  # (N,) smallest observed loss of each curve


class ScalingLaw:
    """Base class: a parametric law fitted in log space.

    Parameters
    ----------
    seed : int
        Seed of the random extra starts (the grid of starts is deterministic).
    n_random_starts : int
        Random starts added to the deterministic grid.
    max_iter : int
        Levenberg-Marquardt iteration cap.
    noise_floor : float
        Smallest residual standard deviation (log space) assumed when computing intervals, so
        that a curve with as many points as parameters does not get a zero-width interval.
    """

    name: str = ""
    param_names: tuple[str, ...] = ()
    uses_zero_shot: bool = False

    def __init__(
        self,
        *,
        seed: int = 0,
        n_random_starts: int = 8,
        max_iter: int = 500,
        noise_floor: float = NOISE_FLOOR,
    ) -> None:
        self.seed = seed
        self.n_random_starts = n_random_starts
        self.max_iter = max_iter
        self.noise_floor = noise_floor

    def _settings(self) -> dict:
        """Keyword arguments that rebuild this law unfitted (for refits)."""
        return {
            "seed": self.seed,
            "n_random_starts": self.n_random_starts,
            "max_iter": self.max_iter,
            "noise_floor": self.noise_floor,
        }

    # -- subclass hooks ---------------------------------------------------------------------
    def _log_loss(self, u: np.ndarray, x: np.ndarray, floor: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _grid_starts(self, c: _Curves) -> np.ndarray:
        """Deterministic starts, shape (N, S, p)."""
        raise NotImplementedError

    def _natural(self, u: np.ndarray, floor: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _log_loss_jacobian(self, u: np.ndarray, x: np.ndarray, floor: np.ndarray):
        """``d ln L / d u``, shape (N, m, p); None: the fit uses finite differences."""
        return None

    # -- public API -------------------------------------------------------------------------
    def fit(self, sizes: np.ndarray, losses: np.ndarray) -> ScalingLaw:
        """Fit the law to one curve or to a batch of curves.

        Parameters
        ----------
        sizes : array_like, shape (m,) or (N, m)
            Fine-tuning data sizes (0 = zero-shot, used only by laws with a finite L(0)).
        losses : array_like, shape (m,) or (N, m)
            Positive test losses; NaN marks a missing point.

        Returns
        -------
        self
        """
        curves, self._single = self._prepare(sizes, losses)
        self._remember(sizes, losses)
        n, p = curves.x.shape[0], len(self.param_names)
        starts = self._all_starts(curves)
        s = starts.shape[1]
        rep = np.repeat  # flatten (curve, start) into one batch
        x, y, w, floor = (rep(a, s, axis=0) for a in (curves.x, curves.y, curves.w, curves.floor))
        result = levenberg_marquardt(
            lambda u, rows=slice(None): self._residuals(u, x[rows], y[rows], w[rows], floor[rows]),
            starts.reshape(n * s, p),
            max_iter=self.max_iter,
            jacobian=self._residual_jacobian(x, w, floor),
        )
        best = best_of_starts(result.cost, n, s)
        converged = result.converged[best] & np.isfinite(result.cost[best])
        self._set_fitted(curves, result.theta[best], converged, result.n_iter, warn=True)
        return self

    def _set_fitted(
        self, c: _Curves, theta: np.ndarray, converged: np.ndarray, n_iter: int, *, warn: bool
    ) -> None:
        """Fitted attributes from the best parameters, and the non-convergence warning."""
        self.theta_, self._curves = theta, c
        self.n_points_ = c.w.sum(axis=1).astype(int)
        self.converged_ = np.asarray(converged, dtype=bool)
        self.n_iter_ = n_iter
        resid = self._residuals(theta, c.x, c.y, c.w, c.floor)
        self.rmse_log_ = np.sqrt(np.sum(resid**2, axis=1) / np.maximum(self.n_points_, 1))
        self.params_ = self._natural(theta, c.floor)
        if warn and not self.converged_.all():
            bad = int((~self.converged_).sum())
            warnings.warn(
                f"{self.name} law: {bad} of {len(theta)} fits did not converge within "
                f"{self.max_iter} iterations; their results are flagged in converged_",
                FitWarning,
                stacklevel=3,
            )
        if self._single:
            self.params_ = {k: float(v[0]) for k, v in self.params_.items()}

    def predict(self, sizes: np.ndarray) -> np.ndarray:
        """Predicted loss at ``sizes`` (shape (q,) -> (q,) for one curve, (N, q) for a batch)."""
        self._check_fitted()
        sizes = _check_sizes(np.atleast_1d(np.asarray(sizes, dtype=float)))
        x = self._log_sizes(sizes)
        x = np.broadcast_to(x, (self.theta_.shape[0], x.shape[-1]))
        with np.errstate(divide="ignore", over="ignore"):
            out = np.exp(self._log_loss(self.theta_, x, self._curves.floor))
        return out[0] if self._single else out

    def predict_interval(
        self, sizes: np.ndarray, level: float = 0.9, *, method: str = "delta"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Central ``level`` interval of the prediction.

        Parameters
        ----------
        sizes : array_like (q,)
            Data sizes to predict at.
        level : float
            Nominal level, in (0, 1).
        method : {"delta", "calibrated"}
            ``"delta"``: the delta method in log space, with parameter covariance
            ``s^2 (J^T J)^-1`` at the optimum and ``s^2`` the residual variance (at least
            ``noise_floor^2``); symmetric in ln L, and it says nothing about how the curve
            bends beyond the data. ``"calibrated"``: conformal quantiles of the law's own
            extrapolation errors (:meth:`calibrate`), scaled to each size's horizon.
        """
        self._check_fitted()
        level = check_level(level)
        if method == "calibrated":
            return self._calibrated_interval(sizes, level)
        if method != "delta":
            raise ValueError(f"method must be 'delta' or 'calibrated', got {method!r}")
        return self._delta_interval(sizes, level)

    def _linearised(self, sizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x_q, r0, jac)``: the log query sizes per curve, and the residuals and their
        Jacobian at the fitted parameters (what a delta-method interval is built from)."""
        c = self._curves
        x_q = self._log_sizes(_check_sizes(np.atleast_1d(np.asarray(sizes, dtype=float))))
        x_q = np.broadcast_to(x_q, (self.theta_.shape[0], x_q.shape[-1]))
        r0 = self._residuals(self.theta_, c.x, c.y, c.w, c.floor)
        jac = numeric_jacobian(
            lambda u: self._residuals(u, c.x, c.y, c.w, c.floor), self.theta_, r0
        )
        return x_q, r0, jac

    def _delta_interval(self, sizes, level: float) -> tuple[np.ndarray, np.ndarray]:
        c = self._curves
        x_q, r0, jac = self._linearised(sizes)
        p = self.theta_.shape[1]
        dof = np.maximum(self.n_points_ - p, 1)
        s2 = np.maximum(np.sum(r0**2, axis=1) / dof, self.noise_floor**2)
        jtj = np.einsum("kmi,kmj->kij", jac, jac) + 1e-10 * np.eye(p)
        cov = s2[:, None, None] * np.linalg.pinv(jtj)
        pred = self._log_loss(self.theta_, x_q, c.floor)
        grad = numeric_jacobian(lambda u: self._log_loss(u, x_q, c.floor), self.theta_, pred)
        var = np.einsum("kqi,kij,kqj->kq", grad, cov, grad)
        half = ndtri(0.5 + level / 2) * np.sqrt(np.maximum(var, 0.0) + s2[:, None])
        with np.errstate(over="ignore"):  # an unidentified fit's upper bound is honestly inf
            lo, hi = np.exp(pred - half), np.exp(pred + half)
        return (lo[0], hi[0]) if self._single else (lo, hi)

    def calibrate(self) -> ScalingLaw:
        """Backtest the law on its own curves; the result feeds calibrated intervals.

        Every curve is cut after each of its sizes that leaves at least one point more than
        the law has parameters, the cut curves are refitted (one batch per cut size, same
        settings), and their log errors at the larger sizes are recorded. Sets
        ``calibration_`` (an :class:`~lens_model.calibration.IntervalCalibrator`, or None when
        the curves are too short for a backtest) and ``calibration_basis_`` (what the
        intervals rest on, in words). Calibrated intervals need one size ladder shared by all
        curves (1-D ``sizes`` in :meth:`fit`).

        Returns
        -------
        self
        """
        self._check_fitted()
        sizes, losses = self._fit_data
        if sizes.ndim != 1:
            raise ValueError(
                "calibrated intervals need one size ladder for all curves (1-D sizes in fit)"
            )
        backtest = backtest_refits(
            self._refit,
            sizes,
            losses,
            min_points=len(self.param_names) + 1,
            zero_shot=self.uses_zero_shot,
        )
        try:
            self.calibration_ = IntervalCalibrator().fit(backtest)
            self.calibration_basis_ = self.calibration_.basis(0.9)
        except ValueError as err:
            self.calibration_ = None
            self.calibration_basis_ = f"no backtest ({err})"
        return self

    def _refit(self, kept_sizes, kept_losses, rows) -> np.ndarray:
        """Predictions at every fitted size of a fresh law fitted to cut curves ``rows``."""
        law = type(self)(**self._settings())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)  # a backtest uses the best fit found
            law.fit(kept_sizes, kept_losses)
        return law.predict(self._fit_data[0])

    def _calibrated_interval(self, sizes, level: float) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "calibration_"):
            self.calibrate()
        cal = self.calibration_
        if cal is None:
            raise ValueError(
                f"{self.name} law: no calibrated interval, the curves are too short for a "
                f"backtest ({self.calibration_basis_}); use method='delta'"
            )
        q = _check_sizes(np.atleast_1d(np.asarray(sizes, dtype=float)))
        centre = np.log(np.atleast_2d(self.predict(q)))
        fitted, losses = self._fit_data
        largest = np.nanmax(np.where(np.isfinite(losses) & (fitted > 0), fitted, np.nan), axis=1)
        # A size inside the data is at least as hard as the shortest backtest extrapolation.
        horizon = np.maximum(np.log2(q[None, :] / largest[:, None]), cal.min_horizon_)
        lo, hi = cal.interval(centre, power_scale(horizon), level)
        lo, hi = np.exp(lo), np.exp(hi)
        return (lo[0], hi[0]) if self._single else (lo, hi)

    # -- internals --------------------------------------------------------------------------
    def _remember(self, sizes, losses) -> None:
        """Keep the data of the last fit (a calibrated interval refits on cuts of it)."""
        losses = np.atleast_2d(np.asarray(losses, dtype=float))
        sizes = np.asarray(sizes, dtype=float)
        self._fit_data = (
            sizes if sizes.ndim == 1 else np.broadcast_to(sizes, losses.shape),
            losses,
        )
        self.__dict__.pop("calibration_", None)
        self.__dict__.pop("calibration_basis_", None)

    def _log_sizes(self, sizes: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(np.where(sizes > 0, sizes, ZERO_SIZE))

    def _prepare(self, sizes: np.ndarray, losses: np.ndarray) -> tuple[_Curves, bool]:
        losses = np.asarray(losses, dtype=float)
        single = losses.ndim == 1
        losses = np.atleast_2d(losses)
        sizes = np.broadcast_to(np.asarray(sizes, dtype=float), losses.shape)
        _check_sizes(sizes)
        if np.any(losses[np.isfinite(losses)] <= 0):
            raise ValueError("losses must be positive (they are fitted in log space)")
        used = np.isfinite(losses) & (self.uses_zero_shot | (sizes > 0))
        p = len(self.param_names)
        if np.any(used.sum(axis=1) < p - 1):
            raise ValueError(
                f"the {self.name} law needs at least {p - 1} usable points per curve "
                f"(got {used.sum(axis=1).min()})"
            )
        x = self._log_sizes(sizes)
        y = np.where(used, np.log(np.where(used, losses, 1.0)), 0.0)
        floor = np.nanmin(np.where(used, losses, np.nan), axis=1)
        return _Curves(x=x, y=y, w=used.astype(float), floor=floor), single

    def _residual_jacobian(self, x, w, floor):
        """The fit's ``jacobian(u, rows)`` for ``levenberg_marquardt`` (None: numeric)."""
        if self._log_loss_jacobian(np.zeros((1, len(self.param_names))), x[:1], floor[:1]) is None:
            return None

        def jacobian(u, rows):  # levenberg_marquardt zeroes non-finite entries
            return self._log_loss_jacobian(u, x[rows], floor[rows]) * w[rows][:, :, None]

        return jacobian

    def _residuals(self, u, x, y, w, floor) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            r = self._log_loss(u, x, floor) - y
        return np.where(w > 0, r, 0.0)

    def _all_starts(self, c: _Curves) -> np.ndarray:
        grid = self._grid_starts(c)
        if self.n_random_starts <= 0:
            return grid
        rng = np.random.default_rng(self.seed)
        pick = rng.integers(0, grid.shape[1], size=self.n_random_starts)
        jitter = rng.normal(0.0, 1.0, size=(grid.shape[0], self.n_random_starts, grid.shape[2]))
        return np.concatenate([grid, grid[:, pick, :] + jitter], axis=1)

    def _check_fitted(self) -> None:
        if not hasattr(self, "theta_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit() first")


def _check_sizes(sizes: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(sizes)):
        raise ValueError("data sizes must be finite numbers (got NaN or inf)")
    if np.any(sizes < 0):
        raise ValueError("data sizes must be >= 0")
    return sizes


@LAWS.register("vanilla")
class VanillaLaw(ScalingLaw):
    """Power law ``L(D) = B / D^beta + E`` (zero-shot points are ignored: L(0) is infinite)."""

    name = "vanilla"
    param_names = ("B", "beta", "E")

    # u = (logit(E / floor), ln B, logit(beta / BETA_MAX))
    def _log_loss(self, u, x, floor):
        e = np.maximum(floor[:, None] * sigmoid(u[:, 0:1]), 1e-300)
        beta = BETA_MAX * sigmoid(u[:, 2:3])
        return np.logaddexp(u[:, 1:2] - beta * x, np.log(e))

    def _log_loss_jacobian(self, u, x, floor):
        s_e, s_beta = sigmoid(u[:, 0:1]), sigmoid(u[:, 2:3])
        log_e = np.log(np.maximum(floor[:, None] * s_e, 1e-300))
        power = u[:, 1:2] - BETA_MAX * s_beta * x  # ln(B / D^beta)
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.logaddexp(power, log_e)
            g_power, g_e = np.exp(power - total), np.exp(log_e - total)
        d_beta = -x * BETA_MAX * s_beta * (1 - s_beta)
        return np.stack(np.broadcast_arrays(g_e * (1 - s_e), g_power, g_power * d_beta), axis=-1)

    def _grid_starts(self, c):
        starts = []
        first = np.argmax(c.w, axis=1)
        idx = np.arange(len(first))
        x0, y0 = c.x[idx, first], c.y[idx, first]
        for e_frac in (0.01, 0.5, 0.9):
            for beta in (0.1, 0.3, 0.7):
                e = e_frac * c.floor
                ln_b = np.log(np.maximum(np.exp(y0) - e, 1e-6)) + beta * x0
                u = np.stack(
                    [
                        np.full_like(y0, logit(e_frac)),
                        ln_b,
                        np.full_like(y0, logit(beta / BETA_MAX)),
                    ],
                    axis=1,
                )
                starts.append(u)
        return np.stack(starts, axis=1)

    def _natural(self, u, floor):
        return {
            "B": np.exp(u[:, 1]),
            "beta": BETA_MAX * sigmoid(u[:, 2]),
            "E": floor * sigmoid(u[:, 0]),
        }


@LAWS.register("rectified")
class RectifiedLaw(ScalingLaw):
    """Rectified law ``L(D) = B / (D_l + D^beta) + E`` with ``L(0) = B / D_l + E``.

    Fitted as ``ln L = ln((A - E) / (1 + exp(beta ln D + c)) + E)``, ``A = L(0)``,
    ``D_l = exp(-c)``, ``B = (A - E) D_l``. Zero-shot points (D = 0) are used.
    """

    name = "rectified"
    param_names = ("B", "D_l", "beta", "E")
    uses_zero_shot = True

    # u = (logit(E / floor), ln(A - E), logit(beta / BETA_MAX), c)
    def _log_loss(self, u, x, floor):
        return self._log_loss_with_c(u, x, floor, u[:, 3:4])

    @staticmethod
    def _log_loss_with_c(u, x, floor, c):
        e = np.maximum(floor[:, None] * sigmoid(u[:, 0:1]), 1e-300)
        beta = BETA_MAX * sigmoid(u[:, 2:3])
        z = np.clip(beta * x + c, -700, 700)
        return np.logaddexp(u[:, 1:2] - np.logaddexp(0.0, z), np.log(e))

    def _log_loss_jacobian(self, u, x, floor):
        return self._jacobian_with_c(u, x, floor, u[:, 3:4])

    @staticmethod
    def _jacobian_with_c(u, x, floor, c):
        """``d ln L / d (u_0, u_1, u_2, c)``, shape (N, m, 4)."""
        s_e, s_beta = sigmoid(u[:, 0:1]), sigmoid(u[:, 2:3])
        log_e = np.log(np.maximum(floor[:, None] * s_e, 1e-300))
        z_raw = BETA_MAX * s_beta * x + c
        z = np.clip(z_raw, -700, 700)
        power = u[:, 1:2] - np.logaddexp(0.0, z)  # ln((A - E) / (1 + e^z))
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.logaddexp(power, log_e)
            g_power, g_e = np.exp(power - total), np.exp(log_e - total)
        d_z = -g_power * sigmoid(z) * (np.abs(z_raw) < 700)  # a clipped z does not move
        d_beta = d_z * x * BETA_MAX * s_beta * (1 - s_beta)
        return np.stack(np.broadcast_arrays(g_e * (1 - s_e), g_power, d_beta, d_z), axis=-1)

    def _grid_starts(self, c):
        starts = []
        first = np.argmax(c.w, axis=1)
        idx = np.arange(len(first))
        y0 = c.y[idx, first]
        finite_x = np.where((c.w > 0) & (c.x > np.log(ZERO_SIZE) + 1), c.x, np.nan)
        x_lo, x_hi = np.nanmin(finite_x, axis=1), np.nanmax(finite_x, axis=1)
        for e_frac in (0.1, 0.5, 0.9):
            for beta in (0.2, 0.5, 1.0):
                for where in (-0.5, 0.25, 0.75):  # the knee, as a fraction of the probed range
                    knee = x_lo + where * (x_hi - x_lo)
                    e = e_frac * c.floor
                    u = np.stack(
                        [
                            np.full_like(y0, logit(e_frac)),
                            np.log(np.maximum(np.exp(y0) - e, 1e-6)),
                            np.full_like(y0, logit(beta / BETA_MAX)),
                            -beta * knee,
                        ],
                        axis=1,
                    )
                    starts.append(u)
        return np.stack(starts, axis=1)

    def _natural(self, u, floor):
        e = floor * sigmoid(u[:, 0])
        d_l = np.exp(-u[:, 3])
        return {
            "B": np.exp(u[:, 1]) * d_l,
            "D_l": d_l,
            "beta": BETA_MAX * sigmoid(u[:, 2]),
            "E": e,
            "zero_shot_loss": np.exp(u[:, 1]) + e,
        }


@LAWS.register("lens")
class LensLaw(RectifiedLaw):
    """LensLLM law ``L(D) = B / (s F + D^beta) + E``: the rectified law with ``D_l = s F``.

    ``F`` is each model's NTK term (``lens_model.ntk.f_term``: the residual left by
    linearised training of its kernel), given to :meth:`fit` as ``f_term``; its scale relative
    to ``D^beta`` is arbitrary, so a scale ``s`` is fitted:

    * ``scale="per_model"``: one ``s`` per curve. That is exactly the rectified law with
      ``D_l = s F`` (same fit, same predictions); ``scale_ = D_l / F`` is reported.
    * ``scale="shared"``: one ``s`` for all curves of the batch, so every curve's knee is
      tied to its kernel feature and a curve with few points borrows strength from the others.
      The total cost is profiled over a grid of ``ln s`` (each point fits A - E, beta and E of
      every curve with ``c = -ln(s F_m)`` fixed), then ``ln s`` is refined by a bounded 1-D
      minimisation. ``scale_`` is that ``s``; intervals include its uncertainty.

    Without ``f_term`` the law is the rectified law (``scale_`` is None).

    Parameters
    ----------
    scale : {"shared", "per_model"}
        How the scale of ``F`` is fitted.
    log_scale_bounds : (float, float), optional
        Search interval of ``ln s`` (shared scale); by default it spans knees ``D_l`` from
        ``e^-5`` to ``(largest probed size)^2`` for every curve.
    n_grid : int
        Grid points of the profile over ``ln s``.
    seed, n_random_starts, max_iter, noise_floor
        As for :class:`ScalingLaw`.
    """

    name = "lens"

    def __init__(
        self,
        *,
        scale: str = "shared",
        log_scale_bounds: tuple[float, float] | None = None,
        n_grid: int = 41,
        seed: int = 0,
        n_random_starts: int = 8,
        max_iter: int = 500,
        noise_floor: float = NOISE_FLOOR,
    ) -> None:
        super().__init__(
            seed=seed, n_random_starts=n_random_starts, max_iter=max_iter, noise_floor=noise_floor
        )
        self.scale = scale
        self.log_scale_bounds = log_scale_bounds
        self.n_grid = n_grid

    def _settings(self) -> dict:
        return super()._settings() | {
            "scale": self.scale,
            "log_scale_bounds": self.log_scale_bounds,
            "n_grid": self.n_grid,
        }

    def _refit(self, kept_sizes, kept_losses, rows) -> np.ndarray:
        if self.f_term_ is None:
            return super()._refit(kept_sizes, kept_losses, rows)
        law = type(self)(**self._settings())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)
            law.fit(kept_sizes, kept_losses, f_term=self.f_term_[rows])
        return law.predict(self._fit_data[0])

    def fit(
        self, sizes: np.ndarray, losses: np.ndarray, f_term: np.ndarray | float | None = None
    ) -> LensLaw:
        """Fit the law; ``f_term`` has one positive value per curve (shape (N,), or a scalar
        for a single curve). See :meth:`ScalingLaw.fit` for ``sizes`` and ``losses``."""
        if self.scale not in ("shared", "per_model"):
            raise ValueError(f"scale must be 'shared' or 'per_model', got {self.scale!r}.")
        self._shared = False
        if f_term is None:
            self.f_term_ = self.scale_ = None
            super().fit(sizes, losses)
            return self
        n_curves = np.atleast_2d(np.asarray(losses, dtype=float)).shape[0]
        f = _check_f_term(f_term, n_curves)
        if self.scale == "per_model":
            super().fit(sizes, losses)
            scale = self.params_["D_l"] / (f[0] if self._single else f)
            self.params_["scale"], self.params_["F"] = scale, (f[0] if self._single else f)
            self.scale_, self.f_term_ = scale, f
            return self
        return self._fit_shared(sizes, losses, f)

    # -- shared scale -----------------------------------------------------------------------
    def _fit_shared(self, sizes, losses, f: np.ndarray) -> LensLaw:
        from scipy.optimize import minimize_scalar

        curves, self._single = self._prepare(sizes, losses)
        self._remember(sizes, losses)
        ln_f = np.log(f)
        starts = self._all_starts(curves)[:, :, :3]
        lo, hi = self._scale_bounds(curves, ln_f)
        if not lo < hi:
            raise ValueError(f"log_scale_bounds must be (low, high) with low < high, got {lo, hi}")
        grid = np.linspace(lo, hi, max(self.n_grid, 3))
        costs = np.array([self._fit_given_scale(curves, starts, ln_f, g)[1].sum() for g in grid])
        if not np.any(np.isfinite(costs)):
            raise ValueError("the lens law could not be evaluated at any scale (non-finite fits)")
        i = int(np.nanargmin(costs))
        res = minimize_scalar(
            lambda g: self._fit_given_scale(curves, starts, ln_f, g)[1].sum(),
            bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]),
            method="bounded",
            options={"xatol": 1e-5},
        )
        log_s = float(res.x) if res.fun <= costs[i] else float(grid[i])
        theta, _, converged, n_iter = self._fit_given_scale(curves, starts, ln_f, log_s)
        self._shared = True
        self.log_scale_, self.scale_, self.f_term_ = log_s, float(np.exp(log_s)), f
        at_edge = i in (0, len(grid) - 1)
        self._finish(curves, theta, converged & (not at_edge), n_iter, res.success, not at_edge)
        self.params_["scale"] = self.scale_
        self.params_["F"] = f[0] if self._single else f
        if at_edge:
            warnings.warn(
                f"lens law: the shared scale ended at the edge of its search interval "
                f"(ln s = {log_s:.2f} in [{lo:.2f}, {hi:.2f}]); widen log_scale_bounds. The fits "
                "are flagged in converged_",
                FitWarning,
                stacklevel=3,
            )
        return self

    def _scale_bounds(self, c: _Curves, ln_f: np.ndarray) -> tuple[float, float]:
        if self.log_scale_bounds is not None:
            return float(self.log_scale_bounds[0]), float(self.log_scale_bounds[1])
        x_hi = float(np.max(np.where(c.w > 0, c.x, -np.inf)))
        return -5.0 - float(ln_f.max()), BETA_MAX * max(x_hi, 1.0) - float(ln_f.min())

    def _fit_given_scale(self, c: _Curves, starts: np.ndarray, ln_f: np.ndarray, log_s: float):
        """Best (A - E, beta, E) of every curve with ``c_m = -(ln s + ln F_m)`` fixed:
        ``(theta (N, 4), cost (N,), converged (N,), n_iter)``."""
        n, s, p = starts.shape
        knee = np.repeat(-(log_s + ln_f), s)[:, None]
        x, y, w, floor = (np.repeat(a, s, axis=0) for a in (c.x, c.y, c.w, c.floor))

        def residuals(u, rows=slice(None)):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                r = self._log_loss_with_c(u, x[rows], floor[rows], knee[rows]) - y[rows]
            return np.where(w[rows] > 0, r, 0.0)

        def jacobian(u, rows):  # levenberg_marquardt zeroes non-finite entries
            jac = self._jacobian_with_c(u, x[rows], floor[rows], knee[rows])[..., :3]
            return jac * w[rows][:, :, None]

        result = levenberg_marquardt(
            residuals, starts.reshape(n * s, p), max_iter=self.max_iter, jacobian=jacobian
        )
        best = best_of_starts(result.cost, n, s)
        theta = np.concatenate([result.theta[best], knee[best]], axis=1)
        ok = result.converged[best] & np.isfinite(result.cost[best])
        return theta, result.cost[best], ok, result.n_iter

    def _finish(
        self, c: _Curves, theta, converged, n_iter: int, scale_ok: bool, warn: bool
    ) -> None:
        """Fitted attributes; a scale at the edge of its range flags every fit."""
        self._set_fitted(
            c, theta, np.asarray(converged, dtype=bool) & bool(scale_ok), n_iter, warn=warn
        )

    def predict_interval(
        self, sizes: np.ndarray, level: float = 0.9
    ) -> tuple[np.ndarray, np.ndarray]:
        """Central ``level`` interval (delta method in log space). With a shared scale the
        covariance is that of all curves' (A - E, beta, E) and ``ln s`` jointly (``ln s`` is
        eliminated by a Schur complement), so the scale's uncertainty widens every interval."""
        self._check_fitted()
        if not self._shared:
            return super().predict_interval(sizes, level)
        c = self._curves
        x_q, r0, jac = self._linearised(sizes)
        s2 = np.maximum(
            np.sum(r0**2, axis=1) / np.maximum(self.n_points_ - 3, 1), self.noise_floor**2
        )
        j_u, j_s = jac[..., :3], -jac[..., 3]  # d/d ln s = -d/dc
        a = np.einsum("kmi,kmj->kij", j_u, j_u) / s2[:, None, None] + 1e-10 * np.eye(3)
        b = np.einsum("kmi,km->ki", j_u, j_s) / s2[:, None]
        d = np.einsum("km,km->k", j_s, j_s) / s2
        a_inv = np.linalg.pinv(a)
        a_inv_b = np.einsum("kij,kj->ki", a_inv, b)
        schur = float(d.sum() - np.einsum("ki,ki->", b, a_inv_b))
        v = 1.0 / max(schur, 1e-12)
        pred = self._log_loss(self.theta_, x_q, c.floor)
        g = numeric_jacobian(lambda u: self._log_loss(u, x_q, c.floor), self.theta_, pred)
        g_u, g_s = g[..., :3], -g[..., 3]
        g_a_inv_b = np.einsum("kqi,ki->kq", g_u, a_inv_b)
        var = np.einsum("kqi,kij,kqj->kq", g_u, a_inv, g_u) + v * (g_a_inv_b - g_s) ** 2
        half = ndtri(0.5 + level / 2) * np.sqrt(np.maximum(var, 0.0) + s2[:, None])
        with np.errstate(over="ignore"):  # an unidentified fit's upper bound is honestly inf
            lo, hi = np.exp(pred - half), np.exp(pred + half)
        return (lo[0], hi[0]) if self._single else (lo, hi)


def _check_f_term(f_term: np.ndarray | float, n_curves: int) -> np.ndarray:
    f = np.atleast_1d(np.asarray(f_term, dtype=float))
    if f.shape != (n_curves,):
        raise ValueError(
            f"f_term needs one value per curve: shape ({n_curves},), got {f.shape}. Compute it "
            "per model with lens_model.ntk.f_term."
        )
    if not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise ValueError(
            "f_term values must be finite and > 0 (F is a squared residual norm); got "
            f"{f.tolist()}. Without NTK features call fit() without f_term (rectified law)."
        )
    return f
