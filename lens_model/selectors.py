"""Model selectors: rank candidates by their (predicted) fine-tuned loss at the target size.

A selector reads probe results through a ``ProbeSource`` (a published loss table in the replay
benchmark, real fine-tunes in the pipeline) that records every (model, size) it reads, so the
compute a selector spends is measured, not declared. Non-adaptive selectors read a fixed ladder
up to the budget; ``Lens`` decides round by round which candidates get more data.

Every selector that predicts a target loss reports a central ``level`` interval for it, and the
probabilities that each candidate is the best and that one beats another. By default
(``interval="calibrated"``) both come from a rolling-origin backtest of the selector's own
predictor on the probes it read (``lens_model.calibration``); ``interval="heuristic"`` keeps
each predictor's own intervals (least-squares, delta-method and local-bend
intervals), with independent normal distributions behind the probabilities. A calibrated
selector with too few probes for a backtest states no interval and no probabilities (method
``"none"``) rather than an uncalibrated one.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as with_fields
from functools import cached_property
from typing import Protocol

import numpy as np

from lens_model.calibration import (
    Backtest,
    IntervalCalibrator,
    Predictive,
    backtest_local_slope,
    backtest_power_phase,
    backtest_refits,
    check_interval_method,
    check_level,
    heuristic_predictive,
    power_scale,
    secant_scale,
)
from lens_model.error_model import ErrorEvidence, ErrorModel, posterior_predictive
from lens_model.laws import FitWarning, RectifiedLaw, ScalingLaw, VanillaLaw
from lens_model.lookup import Registry
from lens_model.metrics import probe_cost
from lens_model.phase import local_slope_prediction, power_phase_prediction
from lens_model.weight_spectrum import RANKING_METRIC, SUMMARY_METRICS

SELECTORS: Registry[type[Selector]] = Registry("selector")


class ProbeSource(Protocol):
    """Where a selector gets probe losses from."""

    sizes: np.ndarray  # the ladder a selector may probe, increasing, 0 = zero-shot
    model_sizes: np.ndarray  # parameter count per candidate
    # optional NTK term F(eta, t) per candidate (``lens_model.ntk``); None when not computed
    f_terms: np.ndarray | None

    def loss(self, model: int, size: int) -> float: ...

    @property
    def probes(self) -> set[tuple[int, int]]: ...


class TableProbes:
    """A ``ProbeSource`` over a loss table, with a cap on the largest size that may be read.

    Parameters
    ----------
    sizes : array_like, shape (m,)
        Column sizes of ``losses`` (0 = zero-shot).
    losses : array_like, shape (N, m)
        Loss of model i fine-tuned on sizes[j] examples.
    model_sizes : array_like, shape (N,)
        Parameter counts.
    max_size : float
        No size above this may be read (the target size itself, in the replay protocol).
    f_terms : array_like, shape (N,), optional
        NTK term F(eta, t) of each model (``lens_model.ntk.f_term``), when computed.
    """

    def __init__(self, sizes, losses, model_sizes, *, max_size: float, f_terms=None) -> None:
        self._all_sizes = np.asarray(sizes, dtype=float)
        self._losses = np.asarray(losses, dtype=float)
        self.model_sizes = np.asarray(model_sizes, dtype=float)
        self.f_terms = None if f_terms is None else np.asarray(f_terms, dtype=float)
        self.max_size = max_size
        self.sizes = self._all_sizes[self._all_sizes <= max_size]
        self._probes: set[tuple[int, int]] = set()

    def loss(self, model: int, size: int) -> float:
        if size > self.max_size:
            raise ValueError(f"size {size} is above the largest readable size {self.max_size}")
        hits = np.flatnonzero(self._all_sizes == size)
        if hits.size == 0:
            raise KeyError(f"size {size} is not in the ladder {self.sizes.astype(int).tolist()}")
        self._probes.add((int(model), int(size)))
        return float(self._losses[model, hits[0]])

    def read(self, models, sizes) -> np.ndarray:
        """``loss(m, d)`` for every model in ``models`` and size in ``sizes`` at once, shape
        (len(models), len(sizes)); every pair is recorded as a probe."""
        models = [int(m) for m in models]
        sizes = [int(d) for d in sizes]
        if not models or not sizes:
            return np.zeros((len(models), len(sizes)))
        if max(sizes) > self.max_size:
            raise ValueError(
                f"size {max(sizes)} is above the largest readable size {self.max_size}"
            )
        cols = []
        for d in sizes:
            hits = np.flatnonzero(self._all_sizes == d)
            if hits.size == 0:
                raise KeyError(f"size {d} is not in the ladder {self.sizes.astype(int).tolist()}")
            cols.append(int(hits[0]))
        self._probes.update((m, d) for m in models for d in sizes)
        return self._losses[np.ix_(models, cols)].astype(float)

    @property
    def probes(self) -> set[tuple[int, int]]:
        return set(self._probes)


@dataclass
class Selection:
    """What a selector decided.

    Attributes
    ----------
    scores : ndarray (N,)
        The per-model score that ranks (and that PearCorr correlates with the true losses).
    selected : int
        Index of the chosen model (best score, first on ties).
    predictions : ndarray (N,)
        Predicted loss at the target size (NaN where the selector does not predict one).
    lower, upper : ndarray (N,)
        Central ``level`` interval of the prediction (NaN where unavailable).
    probes : set of (model, size)
        Every probe the selector read.
    dropped : dict
        Candidates an adaptive selector stopped probing, with the reason.
    level : float
        Nominal level of ``lower`` / ``upper`` (0.9: a 90 % interval).
    interval_method : str
        ``"calibrated"``, ``"heuristic"`` (asked for) or ``"none"``: no interval, because the
        selector predicts no loss or had too few probes to calibrate one (``interval_basis``
        says which).
    interval_basis : str
        What the intervals rest on, in words (e.g. the backtest's size).
    predictive : Predictive
        The predictive distributions behind the intervals and probabilities.
    predictor : str or None
        How the predictions were made, for selectors that choose (``Lens``: ``"lens_law"``,
        ``"local_slope"`` or ``"power_phase"``); None for the others.
    converged : ndarray of bool (N,) or None
        Whether each candidate's law fit converged, for selectors that fit a law (a fit that
        did not converge keeps its best parameters); None for the others.
    p_best : ndarray (N,)
        Probability that each candidate has the lowest loss at the target; sums to 1 over the
        candidates with a prediction (dropped ones included: they may still be the best), NaN
        for the others and for selectors that predict no loss. Computed on first access.
    evidence : ErrorEvidence or None
        The selection's backtest errors and each candidate's slope and horizon, in the terms
        of the cross-task error model (``lens_model.error_model``), for predictors it covers.

    With an error model, ``predictions`` are the medians of the predictive distributions (the
    predictor's extrapolation moved by the measured bias) while ``scores`` keep the predictor's
    own extrapolation, so the ranking is the published method's.
    """

    scores: np.ndarray
    selected: int
    predictions: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    probes: set[tuple[int, int]]
    dropped: dict[int, str] = field(default_factory=dict)
    greater_is_better: bool = False
    level: float = 0.9
    interval_method: str = "heuristic"
    interval_basis: str = ""
    predictive: Predictive | None = field(default=None, repr=False)
    predictor: str | None = None
    converged: np.ndarray | None = None
    evidence: ErrorEvidence | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.predictive is None:  # a Selection built by hand: normals from its intervals
            self.predictive = heuristic_predictive(
                self.predictions, self.lower, self.upper, self.level
            )
        if not np.isfinite(self.predictions).any():
            self.interval_method = "none"
            self.interval_basis = self.interval_basis or "the selector predicts no target loss"

    @cached_property
    def p_best(self) -> np.ndarray:
        return self.predictive.p_best()

    def prob_better(self, i: int, j: int) -> float:
        """P(candidate ``i`` reaches a lower loss than ``j`` at the target); with
        ``prob_better(j, i)`` it sums to 1 (NaN when either has no prediction)."""
        n = len(self.predictions)
        for k in (i, j):
            if not 0 <= k < n:
                raise ValueError(f"candidate index {k} is out of range for {n} candidates")
        return float(self.predictive.prob_better_matrix()[i, j])

    def prob_better_matrix(self) -> np.ndarray:
        """All pairs at once: ``P[i, j] = prob_better(i, j)`` (0.5 on the diagonal)."""
        return self.predictive.prob_better_matrix()

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The interval at another ``level`` from the same predictive distributions (exactly a
        calibrated selector's interval at that level; heuristic: a normal approximation)."""
        return self.predictive.interval(level)

    def ranking(self) -> np.ndarray:
        """Model indices from best to worst (stable on ties)."""
        key = -self.scores if self.greater_is_better else self.scores
        return np.argsort(key, kind="stable")

    def cost(self, model_sizes: np.ndarray, target_size: float) -> float:
        return probe_cost(self.probes, model_sizes, target_size)


@dataclass(frozen=True)
class Scored:
    """What every ``Selector._score`` returns: scores, predictions and their intervals.

    ``method`` and ``basis`` become the selection's ``interval_method`` and
    ``interval_basis``; ``predictor`` and ``converged`` are passed on as they are.
    """

    scores: np.ndarray
    predictions: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    dropped: dict[int, str] = field(default_factory=dict)
    predictive: Predictive | None = None
    method: str = "heuristic"
    basis: str = ""
    predictor: str | None = None
    converged: np.ndarray | None = None
    evidence: ErrorEvidence | None = None

    @classmethod
    def unpredicted(cls, scores) -> Scored:
        """Scores of a selector that predicts no target loss (NaN predictions and bounds)."""
        n = len(scores)
        return cls(np.asarray(scores, dtype=float), _nan(n), _nan(n), _nan(n))


class Selector:
    """Base class. Subclasses implement ``_score``; ``select`` wraps it into a ``Selection``.

    A selector is configured by its constructor only and ``select`` changes nothing on it, so
    one instance can serve several selections at once; :meth:`replace` makes a copy with other
    settings.

    Parameters
    ----------
    level : float
        Nominal level of the reported intervals, in (0, 1).
    interval : {"calibrated", "heuristic"}
        How intervals and decision probabilities are made (module docstring).
    error_model : ErrorModel, optional
        The cross-task error model (``lens_model.error_model``): calibrated intervals of a
        predictor it covers are its prior updated with the selection's backtest errors. None:
        the backtest alone (split-conformal quantiles, ``IntervalCalibrator``).
    """

    greater_is_better = False
    level = 0.9  # class defaults: a subclass whose __init__ skips super() still selects
    interval = "calibrated"
    error_model = None
    # probe sizes up to the budget (zero-shot aside) the selector needs: a curve to extrapolate
    # needs two
    min_ladder_sizes = 2

    def __init__(
        self,
        *,
        level: float = 0.9,
        interval: str = "calibrated",
        error_model: ErrorModel | None = None,
    ) -> None:
        self.level = check_level(level)
        self.interval = check_interval_method(interval)
        if error_model is not None and not isinstance(error_model, ErrorModel):
            raise ValueError(f"error_model must be an ErrorModel or None, got {error_model!r}")
        self.error_model = error_model

    def get_params(self) -> dict:
        """The constructor's settings, by name (every one is stored under its own name)."""
        names = [
            p.name
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.kind is p.KEYWORD_ONLY
        ]
        return {name: getattr(self, name) for name in names}

    def replace(self, **changes) -> Selector:
        """A new selector of the same class with these settings changed (validated again)."""
        return type(self)(**(self.get_params() | changes))

    def select(self, source: ProbeSource, *, budget: int, target_size: int) -> Selection:
        """Rank the candidates of ``source`` using probes of size <= ``budget`` (non-adaptive)."""
        if budget > target_size:
            raise ValueError(f"budget ({budget}) must not exceed target_size ({target_size})")
        ladder = sorted(int(d) for d in source.sizes if 0 < d <= budget)
        if len(ladder) < self.min_ladder_sizes:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_ladder_sizes} probe sizes up to "
                f"the budget ({budget}) to extrapolate a curve, got {ladder}: lengthen the ladder"
            )
        scored = self._score(source, budget, target_size)
        dropped = scored.dropped
        scores = np.asarray(scored.scores, dtype=float)
        key = -scores if self.greater_is_better else scores.copy()
        # A candidate an adaptive selector dropped saw less data than the survivors, and a NaN
        # score ranks nothing (np.argmin would return it first): never pick either, ranking()
        # puts them last too.
        key = np.where(np.isin(np.arange(len(key)), list(dropped)) | np.isnan(key), np.inf, key)
        return Selection(
            scores=scores,
            selected=int(np.argmin(key)),
            predictions=np.asarray(scored.predictions, dtype=float),
            lower=np.asarray(scored.lower, dtype=float),
            upper=np.asarray(scored.upper, dtype=float),
            probes=source.probes,
            dropped=dropped,
            greater_is_better=self.greater_is_better,
            level=self.level,
            interval_method=scored.method,
            interval_basis=scored.basis,
            predictive=scored.predictive,
            predictor=scored.predictor,
            converged=scored.converged,
            evidence=scored.evidence,
        )

    def _score(self, source: ProbeSource, budget: int, target_size: int) -> Scored:
        """Scores, predictions and intervals of every candidate (subclasses)."""
        raise NotImplementedError

    def _scored(
        self,
        predictions: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        backtest: Callable[[], Backtest],
        *,
        target_size: float,
        largest: np.ndarray,
        second: np.ndarray | None = None,
        dropped: dict[int, str] | None = None,
        family: str | None = None,
        slopes: np.ndarray | None = None,
    ) -> Scored:
        """Scores = predictions, with calibrated intervals from ``backtest()`` (errors of the
        selector's own predictor on its own probes), or the heuristic ``lower`` / ``upper``
        when asked for.

        The error scale of each prediction is the predictor's at its horizon, from the
        candidate's ``largest`` probe to ``target_size``: ``power_scale`` for a line or a law,
        ``secant_scale`` for a secant from the ``second`` largest probe. Too few probes for a
        backtest: no interval at all (NaN bounds and probabilities, method ``"none"``), never
        the predictor's own interval in its place (it has no backtest behind it).

        A predictor of ``family`` (``lens_model.error_model.FAMILIES``) with each candidate's
        local ``slopes`` has its errors described in the error model's terms
        (``Scored.evidence``); with an ``error_model`` covering the family, the intervals are
        its prior updated with the backtest (:meth:`_with_prior`)."""
        pred = np.asarray(predictions, dtype=float)
        dropped = {} if dropped is None else dropped
        if self.interval == "heuristic":
            return Scored(pred, pred, lower, upper, dropped, basis="heuristic (as asked)")
        bt = backtest()
        evidence = None
        if family is not None and slopes is not None:
            evidence = _evidence(family, bt, pred, slopes, np.log2(target_size / largest))
        prior = self.error_model.family(family) if self.error_model is not None else None
        if prior is not None and evidence is not None:
            return self._with_prior(prior, evidence, pred, dropped, bt)
        scored = self._in_selection(pred, bt, dropped, target_size, largest, second)
        return with_fields(scored, evidence=evidence)

    def _with_prior(self, prior, evidence: ErrorEvidence, pred, dropped, bt: Backtest) -> Scored:
        """The error model's prior updated with the backtest errors: medians as predictions,
        Student-t (mixture) intervals, decisions from the joint posterior."""
        predictive = posterior_predictive(prior, evidence)
        with np.errstate(over="ignore", invalid="ignore"):
            median = np.exp(predictive.median())
        lo, hi = predictive.interval(self.level)
        t, n = predictive.marginal, predictive.n_errors
        reach = f", horizons up to {bt.horizons.max():.3g} doublings" if n else ""
        basis = (
            f"calibrated: error-model prior ({self.error_model.source or 'given'}; "
            f"{evidence.family} family, error scale (|slope| + {prior.slope_floor:.3g}) x "
            f"H^{prior.gamma:.2f}, fitted on {prior.n_groups} selections) updated with {n} "
            f"backtest errors from {len(np.unique(evidence.backtest_candidates))} candidate(s)"
            f"{reach}: {predictive.basis()}; the point is the predictive median, the "
            f"prediction moved by the posterior bias ({t.median:+.3f} x the error scale)"
        )
        beyond = prior.beyond_fitted_horizons(evidence.horizons)
        if beyond is not None:
            basis += (
                f"; WARNING: the target is {beyond:.3g} doublings beyond the largest probe, "
                f"past the {prior.max_horizon:.3g} the error model was fitted on, so how its "
                f"intervals widen there is extrapolated and not measured"
            )
        return Scored(
            pred, median, lo, hi, dropped, predictive, "calibrated", basis, evidence=evidence
        )

    def _in_selection(self, pred, bt: Backtest, dropped, target_size, largest, second) -> Scored:
        """Intervals from the selection's backtest alone (split-conformal quantiles)."""
        try:
            calibrator = IntervalCalibrator().fit(bt)
        except ValueError as err:
            nan = _nan(len(pred))
            with np.errstate(divide="ignore", invalid="ignore"):
                predictive = Predictive(centre=np.log(pred), scale=nan)
            basis = (
                f"no interval: too few probes to calibrate one ({err}); the predictor's own "
                "interval has no backtest behind it and is not stated"
            )
            return Scored(pred, pred, nan, nan.copy(), dropped, predictive, "none", basis)
        scale = _error_scale(target_size, largest, second)
        with np.errstate(divide="ignore", invalid="ignore"):
            predictive = calibrator.predictive(np.log(pred), scale)
        lo, hi = predictive.interval(self.level)
        basis = calibrator.basis(self.level)
        return Scored(pred, pred, lo, hi, dropped, predictive, "calibrated", basis)


def _evidence(family: str, bt: Backtest, pred, slopes, horizons) -> ErrorEvidence:
    """The backtest and the target predictions in the error model's terms."""
    bt_slopes = bt.slopes if bt.slopes is not None else np.full(len(bt), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pred = np.log(np.asarray(pred, dtype=float))
    return ErrorEvidence(
        family=family,
        backtest_errors=bt.errors,
        backtest_slopes=bt_slopes,
        backtest_horizons=bt.horizons,
        backtest_candidates=bt.candidates,
        log_predictions=log_pred,
        slopes=np.asarray(slopes, dtype=float),
        horizons=np.asarray(horizons, dtype=float),
    )


def local_slopes(points: list[list[float]], losses: list[list[float]]) -> np.ndarray:
    """Each curve's local slope ``d ln L / d log2 D`` between its two largest positive sizes
    (``points[i]`` increasing with ``losses[i]``); NaN for a curve with fewer than two."""
    out = []
    for d, y in zip(points, losses, strict=True):
        pos = [(a, b) for a, b in zip(d, y, strict=True) if a > 0 and np.isfinite(b)]
        if len(pos) < 2:
            out.append(np.nan)
            continue
        (d1, y1), (d2, y2) = pos[-2], pos[-1]
        out.append((np.log(y2) - np.log(y1)) / np.log2(d2 / d1))
    return np.asarray(out, dtype=float)


def _error_scale(target_size: float, largest, second=None) -> np.ndarray:
    """Error scale of predictions at ``target_size`` from each candidate's ``largest`` probe
    (``log2(target / largest)`` doublings): ``power_scale``, or ``secant_scale`` for a secant
    from the ``second`` largest probe."""
    largest = np.asarray(largest, dtype=float)
    horizon = np.log2(target_size / largest)
    if second is None:
        return power_scale(horizon)
    return secant_scale(horizon, np.log2(largest / second))


def _ladder(source: ProbeSource, budget: float, *, zero_shot: bool) -> np.ndarray:
    s = source.sizes[source.sizes <= budget]
    return s if zero_shot else s[s > 0]


def _read(source: ProbeSource, models, sizes) -> np.ndarray:
    if hasattr(source, "read"):  # a table reads the whole block at once
        return source.read(models, sizes)
    return np.array([[source.loss(m, int(d)) for d in sizes] for m in models], dtype=float)


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


@SELECTORS.register("ZeroShot")
class ZeroShot(Selector):
    """Rank by the zero-shot loss (no fine-tuning)."""

    min_ladder_sizes = 0

    def _score(self, source, budget, target_size):
        return Scored.unpredicted(_read(source, range(len(source.model_sizes)), [0])[:, 0])


@SELECTORS.register("SubTuning")
class SubTuning(Selector):
    """Rank by the loss after fine-tuning on the budget itself."""

    min_ladder_sizes = 1

    def _score(self, source, budget, target_size):
        return Scored.unpredicted(_read(source, range(len(source.model_sizes)), [budget])[:, 0])


@SELECTORS.register("ModelSize")
class ModelSize(Selector):
    """Rank by ln(parameter count), largest first (no probes)."""

    greater_is_better = True
    min_ladder_sizes = 0

    def _score(self, source, budget, target_size):
        return Scored.unpredicted(np.log(source.model_sizes))


class FitMemo:
    """Law fits by their law, seed and data, oldest dropped first beyond ``size`` fits.

    A law selector and its copies (``Selector.replace``) share one memo, so replaying many
    budgets, levels and interval kinds fits each distinct set of curves once. A fit depends
    on its key only, so sharing changes no result.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._fits: dict[tuple, ScalingLaw] = {}

    def get(self, key: tuple, fit: Callable[[], ScalingLaw]) -> ScalingLaw:
        """The fit stored under ``key``, made by ``fit()`` when missing."""
        if key not in self._fits:
            if len(self._fits) >= self.size:
                self._fits.pop(next(iter(self._fits)), None)
            self._fits[key] = fit()
        return self._fits[key]


class _LawFit(Selector):
    """Rank by a law fitted per candidate; ``Selection.converged`` flags each fit.

    The calibrated interval refits the law on every cut of the curves (all curves cut after
    each ladder size that leaves enough points). A cut of every curve at size ``o`` is the fit
    this selector makes at budget ``o``, so fits are memoised by their data (``memo``, shared
    with the copies ``replace`` makes): one selector replaying many budgets fits each distinct
    set of curves once.
    """

    law_cls: type = RectifiedLaw
    zero_shot = False

    def __init__(
        self,
        *,
        seed: int = 0,
        level: float = 0.9,
        interval: str = "calibrated",
        memo: FitMemo | None = None,
        error_model: ErrorModel | None = None,
    ):
        super().__init__(level=level, interval=interval, error_model=error_model)
        self.seed = seed
        self.memo = FitMemo() if memo is None else memo

    def law_at(self, sizes, losses, budget: float) -> ScalingLaw:
        """The law this selector fits at ``budget`` to a full table (memoised).

        Parameters
        ----------
        sizes : array_like (m,)
            Column sizes (0 = zero-shot).
        losses : array_like (N, m)
            Losses of every candidate at every size.
        budget : float
            Largest size used.
        """
        sizes = np.asarray(sizes, dtype=float)
        keep = (sizes <= budget) & ((sizes > 0) | self.zero_shot)
        return self._fit(sizes[keep], np.asarray(losses, dtype=float)[:, keep])

    def _fit(self, sizes: np.ndarray, losses: np.ndarray) -> ScalingLaw:
        def fit() -> ScalingLaw:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FitWarning)  # flagged per model instead
                return self.law_cls(seed=self.seed).fit(sizes, losses)

        key = (self.law_cls, self.seed, sizes.tobytes(), losses.shape, losses.tobytes())
        return self.memo.get(key, fit)

    def _score(self, source, budget, target_size):
        n = len(source.model_sizes)
        sizes = _ladder(source, budget, zero_shot=self.zero_shot)
        losses = _read(source, range(n), sizes)
        law = self._fit(sizes, losses)
        pred = law.predict([target_size])[:, 0]
        lo, hi = law.predict_interval([target_size], level=self.level)

        def backtest() -> Backtest:
            return backtest_refits(
                lambda kept, cut, rows: self._fit(kept, cut).predict(sizes),
                sizes,
                losses,
                min_points=len(law.param_names) + 1,
                zero_shot=self.zero_shot,
            )

        largest = np.full(n, sizes.max())
        scored = self._scored(
            pred, lo[:, 0], hi[:, 0], backtest, target_size=target_size, largest=largest
        )
        return with_fields(scored, converged=law.converged_.copy())


@SELECTORS.register("VanillaFit")
class VanillaFit(_LawFit):
    """Vanilla power law fitted on the positive ladder sizes up to the budget, evaluated at the
    target."""

    law_cls = VanillaLaw


@SELECTORS.register("RectifiedFit")
class RectifiedFit(_LawFit):
    """Rectified law fitted on the zero-shot point and the ladder sizes up to the budget."""

    law_cls = RectifiedLaw
    zero_shot = True


@SELECTORS.register("AtS")
class AtS(Selector):
    """Accept-then-Stop (Lin et al.): extrapolate the power-phase line of the positive ladder
    sizes up to the budget."""

    def __init__(
        self,
        *,
        k: int = 3,
        delta: float = 5.0,
        level: float = 0.9,
        interval: str = "calibrated",
        error_model: ErrorModel | None = None,
    ) -> None:
        super().__init__(level=level, interval=interval, error_model=error_model)
        self.k = k
        self.delta = delta

    def _score(self, source, budget, target_size):
        n = len(source.model_sizes)
        sizes = _ladder(source, budget, zero_shot=False)
        losses = _read(source, range(n), sizes)
        out = np.array(
            [
                power_phase_prediction(
                    sizes, losses[i], target_size, k=self.k, delta=self.delta, level=self.level
                )
                for i in range(n)
            ]
        )

        def backtest() -> Backtest:
            return backtest_power_phase(sizes, losses, k=self.k, delta=self.delta)

        largest = np.full(n, sizes.max())
        slopes = local_slopes([list(sizes)] * n, [list(row) for row in losses])
        return self._scored(
            out[:, 0],
            out[:, 1],
            out[:, 2],
            backtest,
            target_size=target_size,
            largest=largest,
            family="line",
            slopes=slopes,
        )


PREDICTORS = ("auto", "local_slope", "power_phase", "lens_law")


def _usable_f_terms(source: ProbeSource) -> np.ndarray | None:
    f = getattr(source, "f_terms", None)
    if f is None:
        return None
    f = np.asarray(f, dtype=float)
    return f if f.shape == (len(source.model_sizes),) and np.all(np.isfinite(f) & (f > 0)) else None


def first_round(
    ladder: np.ndarray, budget: int, *, first_top: float, spacing: int, min_size=None
) -> list[int]:
    """The sizes ``Lens`` probes every candidate at in its first round, increasing.

    The largest ladder size <= ``first_top * budget``, then that size divided by ``spacing``,
    by ``spacing^2``, ... while the quotient is at least ``min_size`` (default: the smallest
    ladder size). Empty when no ladder size is <= ``first_top * budget``.
    """
    top = ladder[ladder <= budget * first_top]
    if len(top) == 0:
        return []
    floor = ladder.min() if min_size is None else min_size
    sizes = [int(top[-1])]
    while sizes[-1] // spacing >= floor:
        sizes.append(sizes[-1] // spacing)
    return sorted(sizes)


@dataclass
class _LensRun:
    """One ``Lens`` selection in progress: what it read, what it spent, how it predicts.

    Kept per call (never on the selector), so one ``Lens`` can serve several selections.
    """

    source: ProbeSource
    target_size: int
    ladder: np.ndarray  # the sizes Lens may probe, increasing
    weights: np.ndarray  # parameter count per candidate
    cap: float  # the compute cap, in parameters x examples
    spent: float
    points: dict[int, list[int]]  # sizes read per candidate, in the order read
    losses: dict[tuple[int, int], float]  # (candidate, size) -> loss (0 = zero-shot)
    predictor: str = "local_slope"
    f_terms: np.ndarray | None = None


@SELECTORS.register("Lens")
class Lens(Selector):
    """LensLLM's adaptive selector: a sparse ladder for everyone, then successive halving.

    Round 0 probes every candidate on a sparse ladder ending at ``first_top * budget``:
    that size, ``/ spacing``, ``/ spacing^2``, ... (about two thirds of AtS's compute for the
    defaults). The prediction extrapolates the log-log slope between a candidate's two largest
    probes (``predictor="local_slope"``; fine-tuning curves steepen as they leave the
    pre-power phase, so AtS's line through earlier points is biased towards flat slopes), or
    AtS's power-phase line (``"power_phase"``), or the LensLLM law fitted jointly to the
    candidates still running with their NTK terms F and one shared scale, plus the (free)
    zero-shot point (``"lens_law"``; a candidate whose fit gives no finite prediction falls
    back to the local slope). ``"auto"`` (the default) is ``"lens_law"`` when the probe
    source carries F for every candidate and the first round has at least 3 sizes (fewer
    leave the law no residual degree of freedom), and ``"local_slope"`` otherwise; the
    selection's ``predictor`` says which. Each later round ranks the candidates still running
    by predicted target loss, keeps the better ``keep`` fraction and probes them at
    ``spacing`` times their largest size (above the budget if need be, never at the target),
    trimming the worst survivors so that the total stays within ``cost_fraction`` of what AtS
    spends at the same budget. Dropped candidates keep their last prediction and the reason;
    the selection is the best predicted survivor.

    Calibrated intervals backtest the predictor on the probes Lens read, and only those (the
    sparse first round and the survivors' larger probes), or with ``backtest_on="ladder"`` on
    every ladder size up to the budget, read (and counted in the cost) for the backtest alone:
    the live pipeline measures the whole ladder anyway. local-slope errors scale with a
    constant curvature of the curve (``secant_scale``), power-phase and law errors with
    ``h ** 1.5``. A first round of two sizes leaves no backtest for anyone that was dropped
    after it: the selection then states no interval and ``interval_basis`` says why.
    """

    def __init__(
        self,
        *,
        cost_fraction: float = 1.0,
        spacing: int = 4,
        first_top: float = 1.0,
        keep: float = 0.5,
        min_size: int | None = None,
        k: int = 3,
        delta: float = 5.0,
        predictor: str = "auto",
        level: float = 0.9,
        interval: str = "calibrated",
        backtest_on: str = "read",
        error_model: ErrorModel | None = None,
    ) -> None:
        super().__init__(level=level, interval=interval, error_model=error_model)
        if backtest_on not in ("read", "ladder"):
            raise ValueError(f"backtest_on must be 'read' or 'ladder', got {backtest_on!r}")
        self.backtest_on = backtest_on
        if not 0 < cost_fraction <= 1:
            raise ValueError(f"cost_fraction must be in (0, 1], got {cost_fraction}")
        if spacing < 2 or spacing & (spacing - 1):
            raise ValueError(f"spacing must be a power of two >= 2, got {spacing}")
        if not 0 < keep < 1:
            raise ValueError(f"keep must be in (0, 1), got {keep}")
        self.cost_fraction = cost_fraction
        self.spacing = spacing
        self.first_top = first_top
        self.keep = keep
        self.min_size = min_size
        self.k = k
        self.delta = delta
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
        self.predictor = predictor

    def _score(self, source, budget, target_size):
        """The four steps of the class docstring: the first round (which also chooses the
        predictor), the halving rounds, then the backtest behind the intervals."""
        run = self._first_round(source, budget, target_size)
        pred, lo, hi, dropped = self._halve(run)
        backtest = None
        if self.backtest_on == "ladder" and self.interval == "calibrated":
            backtest = self._read_ladder(run, budget)
        return self._calibrated(run, pred, lo, hi, dropped, backtest)

    def _probe_ladder(self, source, budget, target_size) -> tuple[np.ndarray, int]:
        """``(ladder, min_size)``: the sizes Lens may probe (positive, below the target, from
        ``min_size`` up, default the smallest); the budget must be one of them."""
        positive = source.sizes[(source.sizes > 0) & (source.sizes < target_size)]
        min_size = self.min_size or int(positive.min())
        ladder = positive[positive >= min_size]
        if budget not in ladder:
            raise ValueError(f"budget {budget} is not on the ladder {ladder.astype(int).tolist()}")
        return ladder, min_size

    def _first_round(self, source, budget, target_size) -> _LensRun:
        """Probe every candidate on the first round (:func:`first_round`, plus the next
        smaller size on a ladder too short for two) within the compute cap, and choose the
        predictor; the LensLLM law also reads every zero-shot loss (free)."""
        ladder, min_size = self._probe_ladder(source, budget, target_size)
        first = first_round(
            ladder, budget, first_top=self.first_top, spacing=self.spacing, min_size=min_size
        )
        if not first:
            raise ValueError(f"no ladder size is <= {self.first_top} x budget ({budget})")
        if len(first) == 1 and (below := ladder[ladder < first[0]]).size:
            first = [int(below.max()), *first]  # a short ladder: the secant needs two sizes
        w = np.asarray(source.model_sizes, dtype=float)
        cap = self.cost_fraction * ladder[ladder <= budget].sum() * w.sum()
        spent = w.sum() * sum(first)
        if spent > cap * (1 + 1e-12):
            raise ValueError(
                f"the first round ({first}) costs more than the cap of {self.cost_fraction} x AtS"
            )
        points = {i: list(first) for i in range(len(w))}
        losses = {(i, d): source.loss(i, d) for i in range(len(w)) for d in points[i]}
        run = _LensRun(source, target_size, ladder, w, cap, spent, points, losses)
        run.f_terms = _usable_f_terms(source)
        run.predictor = self._choose_predictor(run.f_terms, first)
        if run.predictor == "lens_law":
            losses.update({(i, 0): source.loss(i, 0) for i in range(len(w))})
        return run

    def _choose_predictor(self, f_terms: np.ndarray | None, first: list[int]) -> str:
        """The predictor of this selection (``predictor``, with ``"auto"`` resolved)."""
        # The law has 3 parameters per curve plus the shared scale: with zero-shot and fewer
        # than 3 first-round sizes it has no residual degree of freedom (an exact fit, an
        # unbounded interval), and F decides nothing the data could check.
        determined = len(first) >= 3
        if self.predictor == "auto":
            return "lens_law" if f_terms is not None and determined else "local_slope"
        if self.predictor == "lens_law":
            if f_terms is None:
                raise ValueError("predictor 'lens_law' needs F for every candidate (f_terms)")
            if not determined:
                raise ValueError(
                    f"predictor 'lens_law' needs at least 3 first-round sizes, got {first}: "
                    "lengthen the ladder (or use predictor 'auto', which then uses the local "
                    "slope)"
                )
        return self.predictor

    def _halve(self, run: _LensRun):
        """Successive halving: each round keeps the better ``keep`` fraction of the running
        candidates and probes them at ``spacing`` times the largest size read, trimming the
        worst survivors to stay within the cap. Returns ``(pred, lo, hi, dropped)``: every
        candidate's last prediction and interval, and why each dropped one was dropped."""
        active = list(range(len(run.weights)))
        dropped: dict[int, str] = {}
        pred, lo, hi = self._predict(run, active)
        while len(active) > 1:
            order = sorted(active, key=lambda i: pred[i])
            survivors = order[: max(1, int(np.ceil(len(active) * self.keep)))]
            top = max(run.points[i][-1] for i in survivors)
            bigger = run.ladder[run.ladder >= top * self.spacing]
            if len(bigger) == 0:
                break
            size = int(bigger[0])
            # Shrink the survivor set, worst first, until the round fits the compute cap.
            while survivors and run.spent + size * run.weights[survivors].sum() > run.cap * (
                1 + 1e-12
            ):
                survivors.pop()
            if not survivors:
                break
            for i in set(active) - set(survivors):
                dropped[i] = (
                    f"dropped after size {run.points[i][-1]}: predicted loss {pred[i]:.4g} "
                    f"ranked {order.index(i) + 1} of {len(active)}"
                )
            for i in survivors:
                run.points[i].append(size)
                run.losses[(i, size)] = run.source.loss(i, size)
            run.spent += size * run.weights[survivors].sum()
            active = survivors
            new_pred, new_lo, new_hi = self._predict(run, active)
            pred[active], lo[active], hi[active] = new_pred[active], new_lo[active], new_hi[active]
        return pred, lo, hi, dropped

    def _read_ladder(self, run: _LensRun, budget: int):
        """``(points, losses)`` of every ladder size up to the budget, read (and counted in
        the cost) for the backtest only: where the whole ladder was measured anyway (the live
        pipeline), a backtest on every size checks the predictor on more origins than the
        sparse first round."""
        n = len(run.weights)
        losses = dict(run.losses)
        for i in range(n):
            for d in run.ladder[run.ladder <= budget]:
                losses[(i, int(d))] = run.source.loss(i, int(d))
        points = {i: sorted({d for (j, d) in losses if j == i}) for i in range(n)}
        return points, losses

    def _calibrated(self, run: _LensRun, pred, lo, hi, dropped, backtest=None) -> Scored:
        """Scores with intervals from a backtest of the predictor on the probes read (or on
        ``backtest``'s points and losses when given: ``backtest_on="ladder"``)."""
        n = len(run.points)
        bt_points, bt_losses = backtest or (run.points, run.losses)
        sizes = np.array(sorted({0, *(d for i in bt_points for d in bt_points[i])}), dtype=float)
        table = np.array([[bt_losses.get((i, int(d)), np.nan) for d in sizes] for i in range(n)])
        largest = np.array([max(run.points[i]) for i in range(n)], dtype=float)
        second = None
        if run.predictor == "local_slope":
            second = np.array(
                [sorted(run.points[i])[-2] if len(run.points[i]) > 1 else np.nan for i in range(n)],
                dtype=float,
            )

            def backtest() -> Backtest:
                return backtest_local_slope(sizes, table)

        elif run.predictor == "power_phase":

            def backtest() -> Backtest:
                return backtest_power_phase(sizes, table, k=self.k, delta=self.delta)

        else:

            def backtest() -> Backtest:
                # the law with F has 3 parameters per curve and a shared scale: a cut curve
                # needs the zero-shot point and 3 sizes, as Lens's own first round does
                return backtest_refits(
                    _lens_law_refit(sizes, run.f_terms), sizes, table, min_points=4, zero_shot=True
                )

        family = {"local_slope": "secant", "power_phase": "line"}.get(run.predictor)
        points = [sorted(d for d in run.points[i] if d > 0) for i in range(n)]
        slopes = local_slopes(points, [[run.losses[(i, d)] for d in points[i]] for i in range(n)])
        scored = self._scored(
            pred,
            lo,
            hi,
            backtest,
            target_size=run.target_size,
            largest=largest,
            second=second,
            dropped=dropped,
            family=family,
            slopes=slopes,
        )
        return with_fields(scored, predictor=run.predictor)

    def _extrapolate(self, run: _LensRun, i: int) -> tuple[float, float, float]:
        """Candidate ``i``'s prediction and interval from its own probes (the local slope, or
        the power-phase line for ``predictor="power_phase"``)."""
        sizes = [d for d in run.points[i] if d > 0]
        ys = [run.losses[(i, d)] for d in sizes]
        if run.predictor in ("local_slope", "lens_law"):
            return local_slope_prediction(sizes, ys, run.target_size, level=self.level)
        return power_phase_prediction(
            sizes, ys, run.target_size, k=self.k, delta=self.delta, level=self.level
        )

    def _predict(self, run: _LensRun, models):
        """Predicted target loss of ``models`` and its interval (NaN elsewhere)."""
        n = len(run.points)
        pred, lo, hi = _nan(n), _nan(n), _nan(n)
        law = None
        if run.predictor == "lens_law" and len(models) >= 2:
            law = self._lens_law(run, models)
        for i in models:
            if law is not None and np.isfinite(law[0][i]):
                pred[i], lo[i], hi[i] = law[0][i], law[1][i], law[2][i]
            else:
                pred[i], lo[i], hi[i] = self._extrapolate(run, i)
        return pred, lo, hi

    def _lens_law(self, run: _LensRun, models):
        """The LensLLM law (shared scale of F) fitted to ``models``' probes and zero-shot."""
        from lens_model.laws import LensLaw

        models = list(models)
        sizes = sorted({0, *(d for i in models for d in run.points[i])})
        table = np.array([[run.losses.get((i, d), np.nan) for d in sizes] for i in models])
        law = LensLaw(scale="shared")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)  # unconverged curves fall back below
            law.fit(np.array(sizes, dtype=float), table, f_term=run.f_terms[models])
            centre = law.predict([run.target_size])[:, 0]
            low, high = (v[:, 0] for v in law.predict_interval([run.target_size], level=self.level))
        ok = np.asarray(law.converged_, dtype=bool) & np.isfinite(centre)
        ok &= np.isfinite(low) & np.isfinite(high)
        out = [_nan(len(run.points)) for _ in range(3)]
        for j, i in enumerate(models):
            if ok[j]:
                out[0][i], out[1][i], out[2][i] = centre[j], low[j], high[j]
        return out


def _lens_law_refit(sizes: np.ndarray, f_terms: np.ndarray):
    """``refit`` for ``backtest_refits``: the LensLLM law on cut curves, each with its F.

    The shared scale is profiled on 11 grid points instead of 41 (then refined the same way)
    and without random starts: a backtest refits the law once per cut, and this makes each
    refit about 5x cheaper for nearly the same fit."""
    from lens_model.laws import LensLaw

    def refit(kept, cut, rows):
        law = LensLaw(scale="shared", n_grid=11, n_random_starts=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)
            try:
                law.fit(kept, cut, f_term=f_terms[rows])
            except ValueError:  # a cut the law cannot fit predicts nothing
                return np.full((len(rows), len(sizes)), np.nan)
        out = law.predict(np.maximum(sizes, 1.0))
        return np.where(np.asarray(law.converged_)[:, None], out, np.nan)

    return refit


def ats_cap(ladder: np.ndarray, budget: int, weights: np.ndarray, cost_fraction: float) -> float:
    """The compute cap of an adaptive selector, in parameters x examples: ``cost_fraction``
    of what AtS spends at ``budget`` (every ``ladder`` size up to it, for every candidate).
    It is the cap ``Lens`` computes in its first round, so ``Lens@f`` and
    ``SuccessiveHalving@f`` may spend exactly the same."""
    return float(cost_fraction * ladder[ladder <= budget].sum() * np.sum(weights))


@SELECTORS.register("SuccessiveHalving")
class SuccessiveHalving(Selector):
    """Successive halving, the multi-fidelity peer an ML engineer would reach for (Jamieson &
    Talwalkar 2016; synchronous form of Optuna's ``SuccessiveHalvingPruner`` and Ray Tune's
    ``ASHAScheduler``).

    Every candidate is fine-tuned at the smallest rung ``r``; the best ``1 / reduction_factor``
    of them by measured loss (``floor(n / eta)``, at least one, as Optuna promotes) go on to
    ``r * eta`` examples, and so on. The schedule ends before a rung that would hold a single
    candidate (it decides nothing) or whose size is not on the ladder below the target; rungs
    may pass the budget, as ``Lens``'s do. Survivors (the candidates of the last rung) are
    ranked by their loss there; dropped candidates keep their last measured loss as their
    score and the reason. Ties go to the lower candidate index (a stable sort of the loss),
    at every promotion and in the selection.

    The compute cap is ``Lens``'s (:func:`ats_cap`: ``cost_fraction`` of what AtS spends at
    the same budget), and the cost is counted the same way (every probe read from the
    source). ``r`` is the largest ladder size whose whole schedule fits the cap at the mean
    parameter count (the survivors are not known in advance); when the candidates promoted
    to a rung are larger than the mean and it would pass the cap, the worst of them are not
    promoted after all until it fits (``Lens``'s rule), so the cap always holds. No ladder
    size leaving a first rung within the cap is an error. It never reads the zero-shot loss
    nor the target, and predicts no target loss: it states no interval
    (``interval_method="none"``).

    Parameters
    ----------
    reduction_factor : int
        ``eta``: the share promoted per rung is ``1 / eta`` and the data grows by ``eta``.
    cost_fraction : float
        Cap on compute as a fraction of AtS's at the same budget, in (0, 1].
    min_size : int, optional
        Smallest size a rung may have (default: the smallest positive ladder size).
    """

    min_ladder_sizes = 1

    def __init__(
        self,
        *,
        reduction_factor: int = 2,
        cost_fraction: float = 1.0,
        min_size: int | None = None,
        level: float = 0.9,
        interval: str = "calibrated",
        error_model: ErrorModel | None = None,
    ) -> None:
        super().__init__(level=level, interval=interval, error_model=error_model)
        if int(reduction_factor) != reduction_factor or reduction_factor < 2:
            raise ValueError(f"reduction_factor must be an integer >= 2, got {reduction_factor}")
        if not 0 < cost_fraction <= 1:
            raise ValueError(f"cost_fraction must be in (0, 1], got {cost_fraction}")
        self.reduction_factor = int(reduction_factor)
        self.cost_fraction = cost_fraction
        self.min_size = min_size

    def schedule(self, source: ProbeSource, budget: int, target_size: int):
        """``(rungs, cap)``: the ``(size, candidates)`` of each rung and the compute cap, both
        from the ladder and the model sizes only (never a loss)."""
        positive = source.sizes[(source.sizes > 0) & (source.sizes < target_size)]
        ladder = positive[positive >= (self.min_size or positive.min())]
        if budget not in ladder:
            raise ValueError(f"budget {budget} is not on the ladder {ladder.astype(int).tolist()}")
        w = np.asarray(source.model_sizes, dtype=float)
        cap = ats_cap(ladder, budget, w, self.cost_fraction)
        on_ladder = set(ladder.astype(int).tolist())
        for first in ladder[::-1].astype(int).tolist():
            rungs = [(first, len(w))]
            while (count := rungs[-1][1] // self.reduction_factor) > 1 and (
                size := rungs[-1][0] * self.reduction_factor
            ) in on_ladder:
                rungs.append((size, count))
            if sum(size * count for size, count in rungs) * w.mean() <= cap * (1 + 1e-12):
                return rungs, cap
        raise ValueError(
            f"no successive-halving schedule fits {self.cost_fraction} x AtS's compute at "
            f"budget {budget}: even one rung at {int(ladder.min())} examples costs more; raise "
            "cost_fraction"
        )

    def _score(self, source, budget, target_size):
        rungs, cap = self.schedule(source, budget, target_size)
        w = np.asarray(source.model_sizes, dtype=float)
        n = len(w)
        last = _nan(n)
        dropped: dict[int, str] = {}
        active, spent = list(range(n)), 0.0
        for k, (size, _) in enumerate(rungs):
            last[active] = _read(source, active, [size])[:, 0]
            spent += size * w[active].sum()
            if k + 1 == len(rungs):
                break
            order = sorted(active, key=lambda i: (last[i], i))
            promoted = order[: rungs[k + 1][1]]
            next_size = rungs[k + 1][0]
            while promoted and spent + next_size * w[promoted].sum() > cap * (1 + 1e-12):
                promoted.pop()  # larger models than planned: the worst promoted one stays
            if not promoted:
                break  # no one fits the next rung: this rung's candidates are the survivors
            for place, i in enumerate(order[len(promoted) :], start=len(promoted) + 1):
                dropped[i] = (
                    f"not promoted after {size} examples: loss {last[i]:.4g} ranked {place} of "
                    f"{len(active)} (top {len(promoted)} promoted)"
                )
            active = promoted
        basis = "no interval: successive halving ranks by measured loss, it predicts no target loss"
        return Scored(last, _nan(n), _nan(n), _nan(n), dropped, method="none", basis=basis)


class NeedsWeightsError(ValueError):
    """A selector that ranks by the candidates' weights was given no weight metrics (a
    published loss table holds losses, not weights)."""


@SELECTORS.register("NLPMetrics")
class NLPMetrics(Selector):
    """The NLPmetrics baseline: rank by a weight-spectrum metric of each candidate's weights
    (``lens_model.weight_spectrum``), lowest first, with no probe at all (cost 0).

    The metric values come with the constructor (``values``, one per candidate in the probe
    source's order: the live pipeline and the audit pass each candidate's
    ``SpectralResult.metric(metric)``). Without them the selector cannot rank, and says so
    (:class:`NeedsWeightsError`) instead of guessing: a loss table has no weights. Ties go to
    the first candidate. It predicts no target loss and states no interval.

    Parameters
    ----------
    metric : str
        Which summary metric the values are (one of ``weight_spectrum.SUMMARY_METRICS``,
        lower = better for each); default the literature's mean weighted alpha.
    values : sequence of float, optional
        The metric of every candidate.
    """

    min_ladder_sizes = 0

    def __init__(
        self,
        *,
        metric: str = RANKING_METRIC,
        values=None,
        level: float = 0.9,
        interval: str = "calibrated",
        error_model: ErrorModel | None = None,
    ) -> None:
        super().__init__(level=level, interval=interval, error_model=error_model)
        if metric not in SUMMARY_METRICS:
            raise ValueError(f"metric must be one of {SUMMARY_METRICS}, got {metric!r}")
        self.metric = metric
        self.values = None if values is None else tuple(float(v) for v in values)

    def _score(self, source, budget, target_size):
        n = len(source.model_sizes)
        if self.values is None:
            raise NeedsWeightsError(
                f"NLPMetrics ranks by each candidate's weight-spectrum {self.metric} and was "
                "given none: it needs the candidates' weights (a selection or an audit with "
                "spectral.enabled computes them; a published loss table has none)"
            )
        values = np.asarray(self.values, dtype=float)
        if values.shape != (n,) or not np.isfinite(values).all():
            raise ValueError(
                f"NLPMetrics needs one finite {self.metric} per candidate ({n}), got "
                f"{list(self.values)}"
            )
        basis = "no interval: a weight metric predicts no target loss"
        return Scored(values, _nan(n), _nan(n), _nan(n), method="none", basis=basis)
