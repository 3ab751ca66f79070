"""Calibrated intervals and decision probabilities (lens_model/calibration.py and their use in
lens_model/selectors.py and lens_model/laws.py): coverage on curves drawn from known laws with
known noise, intervals that widen with the extrapolation distance, probabilities that add up,
graceful degradation with few probes, and the scores the replay benchmark reports."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lens_model import SELECTORS, RectifiedLaw, TableProbes
from lens_model.calibration import (
    NOISE_FLOOR,
    Backtest,
    IntervalCalibrator,
    Predictive,
    backtest_local_slope,
    backtest_power_phase,
    coverage,
    interval_score,
    pairwise_outcomes,
    reliability,
    secant_scale,
)
from lens_model.lines import pack_curves, power_phase_lines
from lens_model.loss_table import LossTable
from lens_model.replay import calibration_replay
from tests.conftest import LADDER, TARGET_SIZE, rectified_loss

PREDICTING = ["VanillaFit", "RectifiedFit", "AtS", "Lens"]
LEVELS = (0.5, 0.8, 0.9)


def select(name: str, sizes, losses, budget: int, target: int = TARGET_SIZE, **kwargs):
    w = np.full(len(losses), 1e9)
    source = TableProbes(sizes, losses, w, max_size=target - 1)
    return SELECTORS.get(name)(**kwargs).select(source, budget=budget, target_size=target)


def curved_table(n: int, seed: int, bend: float = 0.0, noise: float = 0.001) -> np.ndarray:
    """Curves that bend at a constant rate in log-log space, ln L = a + s x + k x^2 / 2 with
    x = log2(D / 200): every candidate has its own curvature k ~ N(bend, 0.0015^2), so a secant
    extrapolated h doublings from a window w doublings wide misses by k h (h + w) / 2, exactly
    the ``secant_scale`` the calibration assumes."""
    rng = np.random.default_rng(seed)
    x = np.log2(LADDER[1:] / 200.0)
    a, s = rng.uniform(0.5, 1.5, n), rng.uniform(-0.05, -0.02, n)
    k = rng.normal(bend, 0.0015, n)
    log_loss = a[:, None] + s[:, None] * x + 0.5 * k[:, None] * x**2
    log_loss += noise * rng.standard_normal(log_loss.shape)
    zero_shot = np.exp(a + 0.1)[:, None]
    return np.hstack([zero_shot, np.exp(log_loss)])


# -- coverage on curves from known laws ------------------------------------------------------
def test_lens_covers_at_every_level_when_the_growth_assumption_holds():
    """Lens's local-slope intervals on 200 constant-curvature curves, 0.1 % noise, budgets
    1/512 and 1/256 (2-doubling backtests, 7 to 9 doublings to the target): the share of
    candidates whose true target loss falls inside is the nominal level (binomial tolerance).
    With an h^1.5 scale instead of the secant's h (h + window) it is 0.42 / 0.71 / 0.84."""
    losses = curved_table(200, seed=3)
    truth = losses[:, -1]
    for level in LEVELS:
        hits = []
        for budget in (3_200, 6_400):
            sel = select("Lens", LADDER, losses, budget, level=level)
            assert sel.interval_method == "calibrated"
            hits.append((sel.lower <= truth) & (truth <= sel.upper))
        assert np.mean(hits) == pytest.approx(level, abs=0.05), level


def test_a_consistent_bias_makes_low_level_intervals_conservative():
    """Every curve steepening (the predictor always overshoots): an interval also holds the
    point prediction, so a 50 % interval covers more than half; 90 % stays near nominal."""
    losses = curved_table(200, seed=4, bend=-0.004)
    truth = losses[:, -1]
    cover = {}
    for level in (0.5, 0.9):
        sel = select("Lens", LADDER, losses, 51_200, level=level)
        assert np.all(sel.lower <= sel.predictions) and np.all(sel.predictions <= sel.upper)
        cover[level] = np.mean((sel.lower <= truth) & (truth <= sel.upper))
    assert cover[0.5] > 0.6 and cover[0.9] >= 0.9


def test_ats_intervals_on_rectified_curves_are_not_overconfident():
    """AtS on 60 rectified-law curves with small exponents and knees between 1e3 and 1e6
    examples, 0.5 % log noise. Most of these curves settle into their power phase beyond the
    budget, so errors grow more slowly than the h^1.5 the calibration assumes: the intervals
    are conservative here (about 0.8 / 0.94 / 0.97), never over-confident, and they score far
    better than the heuristic ones, which hold the truth about half as often as they claim."""
    rng = np.random.default_rng(11)
    n = 60
    beta = rng.uniform(0.1, 0.3, n)
    d_l = (10 ** rng.uniform(3.0, 6.0, n)) ** beta
    e = rng.uniform(0.0, 0.5, n)
    b = (rng.uniform(2.5, 4.5, n) - e) * d_l
    losses = rectified_loss(LADDER, b, d_l, beta, e)
    losses *= np.exp(0.005 * rng.standard_normal(losses.shape))
    budgets = [6_400, 12_800, 25_600, 51_200, 102_400, 204_800]
    table = LossTable("SYNTH", [f"m{i}" for i in range(n)], LADDER, losses, np.ones(n))
    rows, _ = calibration_replay(table, methods=["AtS"], budgets=budgets, target_size=TARGET_SIZE)

    def mean(label, level, key="coverage"):
        return np.mean([r[key] for r in rows if r["method"] == label and r["nominal"] == level])

    for level in LEVELS:
        assert mean("AtS", level) >= level - 0.05, level
        assert mean("AtS (heuristic)", level) < level - 0.3, level
    score = "mean_interval_score"
    assert mean("AtS", 0.9, score) < 0.5 * mean("AtS (heuristic)", 0.9, score)


def test_law_calibrated_interval_is_honest_on_its_own_family():
    """The rectified law's calibrated interval at 8x its largest size, on 40 curves of its own
    family with 0.5 % noise. The delta method is right here (the law is the true model); the
    calibrated interval cannot know that, so it is conservative: never over-confident, and at
    most a few times wider."""
    rng = np.random.default_rng(5)
    n = 40
    beta = rng.uniform(0.15, 0.4, n)
    d_l = (10 ** rng.uniform(2.5, 5.0, n)) ** beta
    e = rng.uniform(0.2, 0.8, n)
    b = (rng.uniform(2.5, 4.0, n) - e) * d_l
    sizes = LADDER[:12]  # 0 .. 204800
    far = 8 * sizes.max()
    truth = rectified_loss([far], b, d_l, beta, e)[:, 0]
    losses = rectified_loss(sizes, b, d_l, beta, e) * np.exp(
        0.005 * rng.standard_normal((n, len(sizes)))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        law = RectifiedLaw().fit(sizes, losses)
    for level in LEVELS:
        lo, hi = law.predict_interval([far], level=level, method="calibrated")
        dlo, dhi = law.predict_interval([far], level=level)
        assert coverage(lo[:, 0], hi[:, 0], truth) >= level - 0.05
        assert np.median(np.log(hi / lo)) < 4 * np.median(np.log(dhi / dlo))
    assert law.calibration_basis_.startswith("calibrated: conformal quantiles of a backtest")


# -- intervals and horizons ------------------------------------------------------------------
@pytest.mark.parametrize("name", PREDICTING)
def test_intervals_widen_with_the_extrapolation_distance(name, synthetic_table):
    sizes, losses = np.asarray(synthetic_table.sizes), np.asarray(synthetic_table.losses)
    widths = []
    for target in (204_800 * 2, 204_800 * 8, 204_800 * 32):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sel = select(name, sizes, losses, 25_600, target=target)
        assert sel.interval_method == "calibrated", sel.interval_basis
        widths.append(np.log(sel.upper / sel.lower))
    widths = np.array(widths)
    assert np.all(np.diff(widths, axis=0) > 0)


def test_law_interval_widens_with_distance_and_holds_the_prediction():
    rng = np.random.default_rng(0)
    sizes = LADDER[:12]
    losses = rectified_loss(sizes, [80.0, 150.0], [20.0, 60.0], [0.5, 0.4], [1.0, 0.7])
    losses *= np.exp(0.004 * rng.standard_normal(losses.shape))
    law = RectifiedLaw().fit(sizes, losses)
    far = np.array([4e5, 1.6e6, 6.4e6])
    lo, hi = law.predict_interval(far, method="calibrated")
    pred = law.predict(far)
    assert np.all(lo < pred) and np.all(pred < hi)
    assert np.all(np.diff(np.log(hi / lo), axis=1) > 0)
    with pytest.raises(ValueError, match="method must be 'delta' or 'calibrated'"):
        law.predict_interval(far, method="bootstrap")


def test_calibrated_interval_follows_the_backtest_quantiles():
    """The interval is ln(prediction) + scale * [q_lo, q_hi] with q the conformal order
    statistics of the standardised backtest errors (here 99 errors: the 5th and the 95th)."""
    r = np.linspace(-0.5, 0.5, 99)
    bt = Backtest(
        errors=r * 4.0,
        horizons=np.full(99, 2.0),
        scales=np.full(99, 4.0),
        candidates=np.arange(99),
        groups=np.zeros(99, dtype=int),
        origins=np.zeros(99),
        predictions=np.zeros(99),
    )
    cal = IntervalCalibrator().fit(bt)
    q_lo, q_hi, how = cal.score_quantiles(0.9)
    assert how == "conformal"
    assert (q_lo, q_hi) == pytest.approx((r[4], r[94]))
    lo, hi = cal.interval(np.log(2.0), 10.0, 0.9)
    assert (lo, hi) == pytest.approx((np.log(2.0) + 10 * r[4], np.log(2.0) + 10 * r[94]))
    # symmetric: the 90th smallest |r| of 99 (|r| takes each value k / 98 twice): 45 / 98
    sym = IntervalCalibrator(symmetric=True).fit(bt)
    assert sym.score_quantiles(0.9)[:2] == pytest.approx((-45 / 98, 45 / 98))


def test_a_biased_backtest_never_gives_an_interval_without_the_prediction():
    """Every backtest error negative (the predictor overshoots): the interval lies below the
    prediction but still holds it, with the noise floor above."""
    bt = Backtest(
        errors=-np.linspace(0.1, 0.2, 50),
        horizons=np.ones(50),
        scales=np.ones(50),
        candidates=np.arange(50) % 5,
        groups=np.arange(50) // 5,
        origins=np.zeros(50),
        predictions=np.zeros(50),
    )
    lo, hi = IntervalCalibrator().fit(bt).interval(np.zeros(3), np.ones(3), 0.5)
    assert np.all(lo <= -0.1) and np.all(hi >= NOISE_FLOOR)


# -- the level is a parameter ----------------------------------------------------------------
@pytest.mark.parametrize("name", PREDICTING)
def test_any_level_is_honoured_and_reported(name, synthetic_table):
    sizes, losses = np.asarray(synthetic_table.sizes), np.asarray(synthetic_table.losses)
    at = {}
    for level in (0.5, 0.9, 0.99):
        sel = select(name, sizes, losses, 25_600, level=level)
        assert sel.level == level and sel.interval_method == "calibrated"
        at[level] = sel
    w = {lv: np.log(s.upper / s.lower) for lv, s in at.items()}
    assert np.all(w[0.5] <= w[0.9]) and np.all(w[0.9] <= w[0.99])
    assert np.any(w[0.5] < w[0.9])
    # the same predictive distributions give a run's interval at any other level
    lo, hi = at[0.9].interval(0.5)
    np.testing.assert_allclose(lo, at[0.5].lower)
    np.testing.assert_allclose(hi, at[0.5].upper)


@pytest.mark.parametrize("name", SELECTORS.names())
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"level": 1.0}, "level must be in"),
        ({"level": 0.0}, "level must be in"),
        ({"level": "high"}, "level must be a number"),
        ({"interval": "bootstrap"}, "interval must be one of"),
    ],
)
def test_bad_interval_settings_are_refused(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SELECTORS.get(name)(**kwargs)


def test_heuristic_intervals_stay_available(synthetic_table):
    """``interval="heuristic"``: AtS reports its least-squares prediction interval as before."""
    from lens_model.phase import power_phase_prediction

    sizes, losses = np.asarray(synthetic_table.sizes), np.asarray(synthetic_table.losses)
    sel = select("AtS", sizes, losses, 12_800, interval="heuristic", level=0.8)
    assert sel.interval_method == "heuristic" and sel.level == 0.8
    ladder = sizes[(sizes > 0) & (sizes <= 12_800)]
    cols = np.isin(sizes, ladder)
    for i in range(len(losses)):
        _, lo, hi = power_phase_prediction(ladder, losses[i, cols], TARGET_SIZE, level=0.8)
        assert (sel.lower[i], sel.upper[i]) == pytest.approx((lo, hi))


# -- decision probabilities ------------------------------------------------------------------
@pytest.mark.parametrize("name", PREDICTING)
@pytest.mark.parametrize("interval", ["calibrated", "heuristic"])
def test_probabilities_add_up(name, interval, synthetic_table):
    sizes, losses = np.asarray(synthetic_table.sizes), np.asarray(synthetic_table.losses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select(name, sizes, losses, 12_800, interval=interval)
    n = len(losses)
    assert sel.p_best.shape == (n,) and np.all(sel.p_best >= 0)
    assert sel.p_best.sum() == pytest.approx(1.0, abs=1e-9)
    p = sel.prob_better_matrix()
    np.testing.assert_allclose(p + p.T, 1.0, atol=1e-12)
    assert np.all(np.diag(p) == 0.5)
    for i, j in [(0, 1), (2, 5), (7, 3)]:
        assert sel.prob_better(i, j) + sel.prob_better(j, i) == pytest.approx(1.0, abs=1e-12)
    assert sel.p_best.argmax() == np.argmin(sel.predictions)
    with pytest.raises(ValueError, match="out of range"):
        sel.prob_better(0, n)


def test_no_prediction_no_probability(synthetic_table):
    sizes, losses = np.asarray(synthetic_table.sizes), np.asarray(synthetic_table.losses)
    sel = select("SubTuning", sizes, losses, 12_800)
    assert sel.interval_method == "none" and np.all(np.isnan(sel.p_best))
    pred = Predictive(centre=np.array([0.0, np.nan, 0.2]), scale=np.ones(3) * 0.1)
    p_best = pred.p_best()
    assert np.isnan(p_best[1]) and p_best[[0, 2]].sum() == pytest.approx(1.0)
    assert np.isnan(pred.prob_better_matrix()[0, 1])


def test_p_best_and_pairs_match_a_monte_carlo_of_the_model():
    """Unequal horizons (as for Lens's dropped candidates) and a common part: the quadrature
    p_best and the closed-form pairwise probabilities agree with draws from the model."""
    pred = Predictive(
        centre=np.array([0.0, 0.05, 0.1, 0.3]),
        scale=np.array([1.0, 3.0, 5.0, 2.0]),
        shrinkage=-0.2,
        common_mean=-0.01,
        common_sd=0.01,
        independent_sd=0.02,
    )
    rng = np.random.default_rng(0)
    draws = 200_000
    common = -0.01 + 0.01 * rng.standard_normal(draws)
    z = pred.decision_centre()[:, None] + pred.scale[:, None] * (
        common[None, :] + 0.02 * rng.standard_normal((4, draws))
    )
    wins = np.bincount(z.argmin(axis=0), minlength=4) / draws
    np.testing.assert_allclose(pred.p_best(), wins, atol=0.005)
    p = pred.prob_better_matrix()
    for i, j in [(0, 1), (1, 2), (0, 3)]:
        assert p[i, j] == pytest.approx(np.mean(z[i] < z[j]), abs=0.005)


def test_shrinkage_never_reverses_the_predicted_order():
    pred = Predictive(centre=np.array([0.0, 0.01, 0.5]), scale=np.ones(3), shrinkage=-0.9)
    p = pred.prob_better_matrix()
    assert p[0, 1] > 0.5 and p[1, 2] > 0.5 and p[0, 2] > 0.5


# -- degrading gracefully with few probes ----------------------------------------------------
def test_three_candidates_three_sizes_get_a_t_interval_that_says_so():
    """The live pipeline's typical selection: too few backtest errors for conformal quantiles
    at 90 %: a finite Student-t interval, and the basis says so."""
    sizes = np.array([0, 16, 32, 64, 128], dtype=float)
    losses = np.array(
        [[3.0, 2.6, 2.4, 2.25, 2.1], [3.2, 2.5, 2.3, 2.2, 2.05], [2.9, 2.7, 2.6, 2.5, 2.4]]
    )
    sel = select("AtS", sizes, losses, 64, target=128)
    assert sel.interval_method == "calibrated"
    assert "Student-t" in sel.interval_basis and "3 errors from 3 candidate" in sel.interval_basis
    assert np.all(np.isfinite(sel.lower)) and np.all(sel.lower < sel.predictions)
    assert np.all(sel.predictions < sel.upper)


def test_lens_with_two_first_round_sizes_states_no_interval_and_says_why():
    sizes = np.array([0, 16, 32, 64, 128, 256], dtype=float)
    losses = np.array(
        [
            [3.0, 2.6, 2.5, 2.3, 2.2, 2.1],
            [3.2, 2.5, 2.4, 2.35, 2.3, 2.2],
            [2.9, 2.8, 2.7, 2.6, 2.5, 2.4],
        ]
    )
    sel = select("Lens", sizes, losses, 64, target=256)  # first round 16 and 64
    assert sel.interval_method == "none"
    assert sel.interval_basis.startswith("no interval: too few probes to calibrate one")
    assert np.all(np.isfinite(sel.predictions))  # it still predicts and ranks
    assert np.all(np.isnan(sel.lower) & np.isnan(sel.upper) & np.isnan(sel.p_best))
    assert np.all(np.isnan(sel.interval(0.5)[0])) and np.isnan(sel.prob_better(0, 1))
    assert select("Lens", sizes, losses, 64, target=256, interval="heuristic").interval_method == (
        "heuristic"
    )  # the uncalibrated interval only when asked for


def test_exact_curves_never_get_a_zero_width_interval():
    """Noiseless power laws: every backtest error is 0, the interval keeps the noise floor."""
    sizes = LADDER[:10]
    losses = np.exp(1.5 - np.array([[0.1], [0.12], [0.08]]) * np.log(np.maximum(sizes, 1.0)))
    sel = select("AtS", sizes, losses, 51_200, target=204_800)
    assert np.all(np.log(sel.upper / sel.lower) >= 2 * NOISE_FLOOR - 1e-12)


def test_calibrator_needs_two_errors():
    with pytest.raises(ValueError, match="at least 2 backtest errors"):
        IntervalCalibrator().fit(Backtest.empty())
    with pytest.raises(RuntimeError, match="not fitted"):
        IntervalCalibrator().score_quantiles(0.9)


# -- backtests -------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "delta"), [(3, 5.0), (2, 3.0), (4, 2.0)])
def test_batched_power_phase_lines_fit_each_curve_on_its_own(k, delta):
    """Curves of different lengths fitted in one batch get the lines each gets alone, and a
    curve that is an exact power law beyond a flat head gets that law's slope and intercept
    from the points of its power phase."""
    rng = np.random.default_rng(k)
    sizes = 200.0 * 2.0 ** np.arange(12)
    curves = []
    for _ in range(30):
        m = int(rng.integers(1, 13))
        losses = 50 / (rng.uniform(3, 3000) + sizes[:m] ** rng.uniform(0.1, 0.8))
        curves.append((losses + rng.uniform(0, 2)) * np.exp(0.005 * rng.standard_normal(m)))
    table = np.full((len(curves), len(sizes)), np.nan)
    for i, c in enumerate(curves):
        table[i, : len(c)] = c
    x, y, count = pack_curves(sizes, table)
    slope, icpt = power_phase_lines(x, y, count, k=k, delta=delta)
    for i, c in enumerate(curves):
        one = power_phase_lines(*pack_curves(sizes[: len(c)], c[None, :]), k=k, delta=delta)
        assert (slope[i], icpt[i]) == pytest.approx((one[0][0], one[1][0]), abs=1e-12)
    head = np.array([5.0, 5.0, 5.0, 5.0])  # flat, far off the power-law line
    tail = 40.0 * sizes[4:] ** -0.3
    line = power_phase_lines(*pack_curves(sizes, np.concatenate([head, tail])[None, :]), k=k,
                             delta=delta)  # fmt: skip
    assert (line[0][0], line[1][0]) == pytest.approx((-0.3, np.log(40.0)), abs=1e-9)


def test_backtest_records_every_cut_and_horizon():
    """Four sizes, two curves: cuts after the 2nd and 3rd size (a line needs two points)
    predict 2 + 1 larger sizes each: 6 errors, horizons 1, 2 and 1 doublings."""
    sizes = np.array([0, 100, 200, 400, 800], dtype=float)
    losses = np.array([[5.0, 3.0, 2.8, 2.6, 2.45], [5.0, 4.0, 3.7, 3.5, 3.2]])
    bt = backtest_power_phase(sizes, losses)
    assert len(bt) == 6 and bt.n_candidates == 2
    assert sorted(bt.horizons.round(9).tolist()) == [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    # a line through 100 and 200 misses 400 by the curve's bend
    x, y = np.log([100, 200, 400]), np.log(losses[0, 1:4])
    slope = (y[1] - y[0]) / (x[1] - x[0])
    want = y[2] - (y[1] + slope * (x[2] - x[1]))
    at = (bt.candidates == 0) & np.isclose(bt.origins, np.log2(200)) & np.isclose(bt.horizons, 1)
    assert bt.errors[at] == pytest.approx([want])


def test_local_slope_backtest_uses_only_the_probes_read():
    sizes = np.array([0, 100, 200, 400, 800, 1600], dtype=float)
    nan = np.nan
    losses = np.array([[5.0, 3.0, nan, 2.6, nan, 2.3], [5.0, 4.0, nan, 3.5, nan, nan]])
    bt = backtest_local_slope(sizes, losses)
    # only curve 0 has three probes: the secant 100 -> 400 predicts 1600, 2 doublings on
    assert len(bt) == 1 and bt.candidates[0] == 0 and bt.horizons[0] == pytest.approx(2.0)
    assert bt.scales[0] == pytest.approx(secant_scale(2.0, 2.0))


# -- scores ----------------------------------------------------------------------------------
def test_interval_score_by_hand():
    # alpha = 0.2: width 2, plus 2/0.2 = 10 per unit of miss
    assert interval_score(1.0, 3.0, 2.0, 0.8) == pytest.approx(2.0)
    assert interval_score(1.0, 3.0, 0.5, 0.8) == pytest.approx(2.0 + 10 * 0.5)
    assert interval_score(1.0, 3.0, 3.25, 0.8) == pytest.approx(2.0 + 10 * 0.25)
    assert coverage([1, 1, 1, np.nan], [3, 3, 3, 3], [2, 4, 3, 2]) == pytest.approx(2 / 3)


def test_reliability_by_hand():
    prob = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    outcome = np.array([0, 1, 1, 1, 0])
    rel = reliability(prob, outcome, n_bins=10)
    counts = [b["count"] for b in rel["bins"]]
    assert counts == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    # bins: |0.05 - 0.5| * 2/5 + |0.55 - 0| * 1/5 + |0.95 - 1| * 2/5
    assert rel["ece"] == pytest.approx(0.45 * 0.4 + 0.55 * 0.2 + 0.05 * 0.4)
    assert rel["brier"] == pytest.approx(np.mean((prob - outcome) ** 2))


def test_pairwise_outcomes_are_every_ordered_pair():
    prob = np.array([[0.5, 0.7, 0.9], [0.3, 0.5, 0.6], [0.1, 0.4, 0.5]])
    p, o = pairwise_outcomes(prob, np.array([1.0, 2.0, 3.0]))
    assert len(p) == 6 and sorted(p.tolist()) == sorted([0.7, 0.9, 0.3, 0.6, 0.1, 0.4])
    assert o[p == 0.7][0] == 1.0 and o[p == 0.3][0] == 0.0


def test_calibration_replay_bins_the_pairwise_probabilities_as_asked(synthetic_table):
    """``n_bins`` sets the reliability bins of every method's pairwise probabilities."""
    kwargs = {"methods": ["AtS"], "budgets": [3_200, 12_800], "target_size": TARGET_SIZE}
    _, coarse = calibration_replay(synthetic_table, n_bins=4, **kwargs)
    _, fine = calibration_replay(synthetic_table, **kwargs)
    for label in ("AtS", "AtS (heuristic)"):
        edges = [(b["low"], b["high"]) for b in coarse[label]["bins"]]
        assert edges == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)], label
        assert len(fine[label]["bins"]) == 10
        assert sum(b["count"] for b in coarse[label]["bins"]) == sum(
            b["count"] for b in fine[label]["bins"]
        )
