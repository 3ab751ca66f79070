"""The cross-task error model (lens_model/error_model.py): recovery of a known model on
synthetic tasks, the Bayesian update's coverage and width, coherent points and decisions,
and its use by every selector."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from lens_model.calibration import _p_min_independent
from lens_model.error_model import (
    ErrorEvidence,
    ErrorGroup,
    ErrorModel,
    FamilyPrior,
    fit_family,
    posterior_predictive,
    pseudo_count_caps,
)
from lens_model.error_prior import NormalInverseGamma
from lens_model.selectors import SELECTORS, TableProbes
from tests.conftest import LADDER, TARGET_SIZE, make_selector

TRUE = FamilyPrior(1.5, 0.05, NormalInverseGamma(m=0.1, kappa=3.0, a=5.0, b=0.4))


def _task(rng, n_backtest: int, n_target: int = 4, family: FamilyPrior = TRUE):
    """One selection drawn from ``family``: backtest errors (one per candidate, horizons 1-2)
    and target errors (horizons 3-6), with their slopes."""
    p = family.prior
    var = 1.0 / rng.gamma(p.a, 1.0 / p.b)
    mu = rng.normal(p.m, math.sqrt(var / p.kappa))
    n = n_backtest + n_target
    slopes = -rng.uniform(0.01, 0.3, n)
    horizons = np.concatenate([rng.integers(1, 3, n_backtest), rng.integers(3, 7, n_target)])
    errors = family.scale(slopes, horizons) * rng.normal(mu, math.sqrt(var), n)
    return errors, slopes, horizons.astype(float), var


def _evidence(errors, slopes, horizons, n_backtest: int) -> ErrorEvidence:
    bt = slice(0, n_backtest)
    tg = slice(n_backtest, None)
    return ErrorEvidence(
        family="secant",
        backtest_errors=errors[bt],
        backtest_slopes=slopes[bt],
        backtest_horizons=horizons[bt],
        backtest_candidates=np.arange(n_backtest),
        log_predictions=np.zeros(len(errors) - n_backtest),
        slopes=slopes[tg],
        horizons=horizons[tg],
    )


def test_fit_recovers_the_growth_slope_floor_and_prior():
    rng = np.random.default_rng(0)
    groups = []
    for k in range(300):
        e, s, h, _ = _task(rng, n_backtest=6)
        groups.append(ErrorGroup(e, s, h, task=f"t{k}"))
    fit = fit_family(groups, per_task=False)  # the pooled parameters (300 one-group tasks)
    assert fit.gamma == pytest.approx(TRUE.gamma, abs=0.12)
    assert fit.slope_floor == pytest.approx(TRUE.slope_floor, rel=0.35)
    assert fit.prior.m == pytest.approx(TRUE.prior.m, abs=0.06)
    # the predictive spread of a new error, the quantity intervals rest on
    assert fit.prior.predictive().sd == pytest.approx(TRUE.prior.predictive().sd, rel=0.15)


@pytest.mark.parametrize("n_backtest", [0, 3, 40])
def test_update_on_tasks_from_the_model_covers_at_the_nominal_level(n_backtest):
    rng = np.random.default_rng(n_backtest)
    held = {0.5: [], 0.9: []}
    for _ in range(1500):
        e, s, h, _ = _task(rng, n_backtest)
        pred = posterior_predictive(TRUE, _evidence(e, s, h, n_backtest))
        for level in held:
            lo, hi = pred.interval(level)
            truth = np.exp(e[n_backtest:])
            held[level].append(np.mean((lo <= truth) & (truth <= hi)))
    for level, values in held.items():
        assert np.mean(values) == pytest.approx(level, abs=0.025)


def test_a_long_ladder_is_dominated_by_its_own_errors_and_a_short_one_by_the_prior():
    rng = np.random.default_rng(3)

    def width(n, sigma):
        """Mean 90 % width (in units of the error scale) over tasks of spread ``sigma``."""
        s, h = -np.full(n + 1, 0.1), np.r_[np.ones(n), 4.0]
        out = []
        for _ in range(200):
            e = TRUE.scale(s, h) * rng.normal(0.0, sigma, n + 1)
            lo, hi = posterior_predictive(TRUE, _evidence(e, s, h, n)).interval(0.9)
            out.append(float(np.log(hi / lo)[0]) / float(TRUE.scale(-0.1, 4.0)))
        return float(np.mean(out))

    lo_q, hi_q = TRUE.prior.predictive().interval(0.9)
    typical = math.sqrt(TRUE.prior.b / (TRUE.prior.a - 1))  # the prior's typical spread
    assert width(3, typical) == pytest.approx(hi_q - lo_q, rel=0.2)  # a 3-size ladder
    wide = 3 * typical  # a task unlike the prior: its own errors pull the interval wider
    assert width(3, wide) > 1.3 * (hi_q - lo_q)
    assert width(400, wide) == pytest.approx(2 * 1.6449 * wide, rel=0.1)  # a long ladder


def test_a_prior_from_a_few_agreeing_tasks_leaves_room_for_a_new_tasks_own_errors():
    """Three tasks with one spread would drive an uncapped ``kappa`` and ``a`` to their
    bounds (a prior sure of every new task's spread); capped by the task count, a new task
    whose errors are ten times smaller narrows its intervals with its own backtest."""
    rng = np.random.default_rng(5)
    agreeing = FamilyPrior(1.5, 0.05, NormalInverseGamma(m=0.0, kappa=1e3, a=1e3, b=250.0))
    groups = [
        ErrorGroup(*_task(rng, n_backtest=4, family=agreeing)[:3], task=f"t{k % 3}")
        for k in range(60)
    ]
    uncapped = fit_family(groups, pseudo_errors_per_task=None, per_task=False).prior
    fit = fit_family(groups, per_task=False)  # the pooled prior alone
    kappa_max, a_max = pseudo_count_caps(3)
    assert uncapped.a > 10 * a_max  # the premise: agreeing tasks claim a known spread
    assert (kappa_max, a_max) == (12.0, 6.0)
    assert fit.prior.kappa <= kappa_max * (1 + 1e-6) and fit.prior.a <= a_max * (1 + 1e-6)
    assert fit.prior.predictive().scale == pytest.approx(0.5, rel=0.25)  # the tasks' spread

    n = 60  # a long ladder of a task with spread 0.05
    s, h = -np.full(n + 1, 0.1), np.r_[np.ones(n), 4.0]
    e = fit.scale(s, h) * rng.normal(0.0, 0.05, n + 1)
    own = _width(posterior_predictive(fit, _evidence(e, s, h, n)).marginal)
    assert own < 0.6 * _width(fit.prior.predictive())


def _width(distribution, level: float = 0.9) -> float:
    lo, hi = distribution.interval(level)
    return hi - lo


def test_the_point_is_the_median_inside_every_interval_and_a_bias_moves_it():
    e = np.array([0.3, 0.35, 0.32, 0.0])  # three backtest errors agree on a positive bias
    s, h = -np.full(4, 0.1), np.array([1.0, 1.0, 1.0, 3.0])
    pred = posterior_predictive(TRUE, _evidence(e, s, h, 3))
    assert pred.median()[0] > 0.0  # moved up from the prediction (log 0)
    for level in (0.1, 0.5, 0.9, 0.99):
        lo, hi = pred.interval(level)
        assert lo[0] < math.exp(pred.median()[0]) < hi[0]


def test_intervals_widen_monotonically_with_the_horizon():
    h = np.arange(1.0, 10.0)
    evidence = ErrorEvidence("secant", *(np.zeros(0),) * 3, np.zeros(0, dtype=int),
                             np.zeros(9), -np.full(9, 0.1), h)  # fmt: skip
    lo, hi = posterior_predictive(TRUE, evidence).interval(0.9)
    assert np.all(np.diff(np.log(hi / lo)) > 0)


def test_pairwise_probabilities_and_p_best_come_from_one_joint_posterior():
    rng = np.random.default_rng(5)
    centre, scale = np.array([0.0, 0.05, 0.2]), np.array([0.3, 0.6, 0.4])
    evidence = ErrorEvidence("secant", *(np.zeros(0),) * 3, np.zeros(0, dtype=int),
                             centre, scale, np.ones(3))  # fmt: skip
    family = FamilyPrior(1.0, 1e-4, TRUE.prior)  # scale = |slope| at H = 1
    pred = posterior_predictive(family, evidence)
    (post,) = pred.posteriors
    var = post.b / rng.gamma(post.a, 1.0, 200_000)
    mu = post.m + np.sqrt(var / post.kappa) * rng.standard_normal(len(var))
    z = centre + pred.scale * (
        mu[:, None] + np.sqrt(var)[:, None] * rng.standard_normal((len(var), 3))
    )
    p = pred.prob_better_matrix()
    assert p[0, 1] == pytest.approx(np.mean(z[:, 0] < z[:, 1]), abs=0.005)
    assert p[1, 2] + p[2, 1] == pytest.approx(1.0)
    best = np.bincount(np.argmin(z, axis=1), minlength=3) / len(z)
    np.testing.assert_allclose(pred.p_best(), best, atol=0.01)


def test_two_identical_candidates_have_even_odds_without_a_division_by_zero():
    with np.errstate(all="raise"):
        p = _p_min_independent(np.array([1.0, 1.0]), np.array([0.0, 0.0]))
        q = _p_min_independent(np.array([1.0, 1.0, 0.5]), np.array([0.0, 0.0, 0.1]))
    np.testing.assert_allclose(p, [0.5, 0.5])
    assert q.sum() == pytest.approx(1.0)
    assert q[0] == pytest.approx(q[1]) and q[2] > 0.99


NARROW = FamilyPrior(1.5, 0.05, NormalInverseGamma(m=0.0, kappa=20.0, a=10.0, b=0.1))
WIDE = FamilyPrior(1.5, 0.05, NormalInverseGamma(m=0.0, kappa=20.0, a=10.0, b=3.6))


def _two_kinds_of_task(rng, per_kind: int = 4, groups: int = 25) -> list[ErrorGroup]:
    """Tasks of two kinds, spreads about 0.1 and 0.6 (ratio 6), one family's scale."""
    return [
        ErrorGroup(*_task(rng, n_backtest=4, family=kind)[:3], task=f"{name}{k}")
        for name, kind in (("narrow", NARROW), ("wide", WIDE))
        for k in range(per_kind)
        for _ in range(groups)
    ]


def test_the_fit_keeps_each_tasks_own_prior_as_a_mixture_component():
    fit = fit_family(_two_kinds_of_task(np.random.default_rng(11)))
    spreads = {c.task: c.prior.b / c.prior.a for c in fit.components}
    assert len(spreads) == 8 and all(c.n_groups == 25 for c in fit.components)
    assert all(c.prior.a <= 12 * (1 + 1e-6) for c in fit.components)  # 2 a <= 24
    narrow = [v for t, v in spreads.items() if t.startswith("narrow")]
    wide = [v for t, v in spreads.items() if t.startswith("wide")]
    assert max(narrow) < min(wide)
    assert np.median(wide) / np.median(narrow) == pytest.approx(36, rel=0.5)  # variances


def _coverage(fits: dict, family: FamilyPrior, n_backtest: int, rng, draws: int = 400) -> dict:
    """Share of true target losses each fit's 50 % and 90 % intervals hold, over new tasks
    drawn from ``family``."""
    held = {(name, level): [] for name in fits for level in (0.5, 0.9)}
    for _ in range(draws):
        e, s, h, _ = _task(rng, n_backtest=n_backtest, family=family)
        truth = np.exp(e[n_backtest:])
        for name, fit in fits.items():
            pred = posterior_predictive(fit, _evidence(e, s, h, n_backtest))
            for level in (0.5, 0.9):
                lo, hi = pred.interval(level)
                held[name, level].append(np.mean((lo <= truth) & (truth <= hi)))
    return {k: float(np.mean(v)) for k, v in held.items()}


def test_the_mixture_covers_each_kind_of_task_where_one_pooled_prior_cannot():
    """Tasks of two kinds, spreads 6x apart. Without a backtest (Lens on two probes) a new
    task gets the even mixture: calibrated over the kinds, as the prior claims. With three
    backtest errors the mixture finds the kind, and each kind's 50 % and 90 % intervals hold
    about as often as they claim; the pooled prior (one Student-t for both kinds) is too
    narrow for the wide kind and too wide for the narrow one."""
    rng = np.random.default_rng(12)
    groups = _two_kinds_of_task(rng)
    fits = {"mixture": fit_family(groups), "pooled": fit_family(groups, per_task=False)}
    blind = [_coverage(fits, kind, 0, rng) for kind in (NARROW, WIDE)]
    for level in (0.5, 0.9):
        assert np.mean([c["mixture", level] for c in blind]) == pytest.approx(level, abs=0.06)
    for kind in (NARROW, WIDE):
        coverage = _coverage(fits, kind, 3, rng)
        for level in (0.5, 0.9):
            assert coverage["mixture", level] == pytest.approx(level, abs=0.07)
        miss = {n: max(abs(coverage[n, lv] - lv) for lv in (0.5, 0.9)) for n in fits}
        assert miss["pooled"] > miss["mixture"] + 0.03


def test_a_backtest_weights_the_tasks_it_resembles():
    fit = fit_family(_two_kinds_of_task(np.random.default_rng(13)))
    rng = np.random.default_rng(14)
    for family, kind in ((NARROW, "narrow"), (WIDE, "wide")):
        e, s, h, _ = _task(rng, n_backtest=12, family=family)
        pred = posterior_predictive(fit, _evidence(e, s, h, 12))
        share = sum(w for w, t in zip(pred.weights, pred.tasks, strict=True) if t.startswith(kind))
        assert share > 0.95
        assert pred.weights.sum() == pytest.approx(1.0)
        assert kind in pred.basis()


def test_the_mixture_quantiles_invert_its_cdf_and_match_draws():
    fit = fit_family(_two_kinds_of_task(np.random.default_rng(15)))
    evidence = ErrorEvidence("secant", *(np.zeros(0),) * 3, np.zeros(0, dtype=int),
                             np.zeros(1), -np.full(1, 0.1), np.ones(1))  # fmt: skip
    t = posterior_predictive(fit, evidence).marginal
    q = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    np.testing.assert_allclose(t.cdf(t.quantile(q)), q, atol=1e-8)
    rng = np.random.default_rng(16)
    which = rng.choice(len(t.parts), size=200_000, p=t.weights)
    u = rng.uniform(size=which.size)
    sample = np.concatenate([p.quantile(u[which == k]) for k, p in enumerate(t.parts)])
    np.testing.assert_allclose(np.quantile(sample, q), t.quantile(q), atol=0.01)


MODEL = ErrorModel({"secant": TRUE, "line": FamilyPrior(1.1, 0.2, TRUE.prior)}, source="test")


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("changes", [{"error_model": MODEL}, {}, {"interval": "heuristic"}])
def test_every_selector_states_its_point_inside_its_interval(name, changes, synthetic_table):
    t = synthetic_table
    source = TableProbes(t.sizes, t.losses, t.model_sizes, max_size=TARGET_SIZE - 1)
    selector = make_selector(name, len(t.models), **changes)
    sel = selector.select(source, budget=51_200, target_size=TARGET_SIZE)
    stated = np.isfinite(sel.lower)
    if not np.isfinite(sel.predictions).any():
        return  # a selector that predicts no loss states no interval
    assert stated.any()
    p = sel.predictions[stated]
    assert np.all((sel.lower[stated] <= p) & (p <= sel.upper[stated]))


@pytest.mark.parametrize("name", ["AtS", "Lens"])
def test_the_error_model_drives_ats_and_lens_and_says_so(name, synthetic_table):
    t = synthetic_table
    source = TableProbes(t.sizes, t.losses, t.model_sizes, max_size=TARGET_SIZE - 1)
    sel = SELECTORS.get(name)(error_model=MODEL).select(
        source, budget=51_200, target_size=TARGET_SIZE
    )
    assert "error-model prior (test" in sel.interval_basis
    assert sel.evidence is not None and sel.evidence.family in MODEL.families
    raw = np.exp(sel.evidence.log_predictions)
    np.testing.assert_allclose(sel.scores, raw)  # ranking stays the predictor's own
    assert np.nansum(sel.p_best) == pytest.approx(1.0)


def test_the_fit_knows_its_horizons_and_flags_a_horizon_past_them():
    rng = np.random.default_rng(3)
    groups = [ErrorGroup(*_task(rng, n_backtest=3)[:3], task=f"t{k % 3}") for k in range(30)]
    fit = fit_family(groups)
    longest = max(float(g.horizons.max()) for g in groups)
    assert fit.max_horizon == longest
    assert fit.beyond_fitted_horizons([1.0, 2.0, longest]) is None
    assert fit.beyond_fitted_horizons([2.0, longest + 3.5, np.nan]) == longest + 3.5
    # a model without a known range (set by hand, or an older file) makes no such claim
    assert FamilyPrior(1.5, 0.05, TRUE.prior).beyond_fitted_horizons([50.0]) is None
    with pytest.raises(ValueError, match="max_horizon must be positive"):
        FamilyPrior(1.5, 0.05, TRUE.prior, max_horizon=0.0)


@pytest.mark.parametrize("name", ["AtS", "Lens"])
def test_a_target_past_the_models_horizons_says_its_widening_is_extrapolated(name, synthetic_table):
    t = synthetic_table
    source = TableProbes(t.sizes, t.losses, t.model_sizes, max_size=TARGET_SIZE - 1)

    def select(max_horizon: float):
        families = {
            f: dataclasses.replace(p, max_horizon=max_horizon) for f, p in MODEL.families.items()
        }
        selector = SELECTORS.get(name)(error_model=ErrorModel(families, source="test"))
        return selector.select(source, budget=51_200, target_size=TARGET_SIZE)

    within = select(100.0)
    assert "WARNING" not in within.interval_basis
    horizon = float(np.nanmax(within.evidence.horizons))
    beyond = select(horizon / 2)
    assert f"target is {horizon:.3g} doublings" in beyond.interval_basis
    assert f"past the {horizon / 2:.3g} the error model was fitted on" in beyond.interval_basis
    # a warning, not another interval
    np.testing.assert_allclose(beyond.lower, within.lower)


def test_widths_grow_with_the_target_distance_for_a_selection(synthetic_table):
    t = synthetic_table
    widths = []
    for target in LADDER[-4:]:
        source = TableProbes(t.sizes, t.losses, t.model_sizes, max_size=target - 1)
        sel = SELECTORS.get("AtS")(error_model=MODEL).select(
            source, budget=12_800, target_size=int(target)
        )
        widths.append(np.log(sel.upper / sel.lower))
    assert np.all(np.diff(np.array(widths), axis=0) > 0)


def test_leave_one_table_out_scores_the_prior_beside_the_backtest_alone():
    from lens_model.replay import error_groups, fit_groups
    from tasks.reporting.replay_report import run_calibration
    from tests.conftest import rectified_table

    ladder = LADDER[:12]
    tables = [rectified_table(ladder, n=4, seed=s, name=f"T{s}") for s in range(3)]
    others = [(f, g) for t in tables[1:] for f, part in error_groups([t]).items() for g in part]
    model = fit_groups(others, source="loto")
    from lens_model.replay import make_selectors

    rows = run_calibration(tables[0], ["AtS"], selectors=make_selectors(["AtS"], error_model=model))
    methods = {r["method"] for r in rows["calibration"]}
    assert methods == {"AtS", "AtS (heuristic)", "AtS (in-selection)"}
