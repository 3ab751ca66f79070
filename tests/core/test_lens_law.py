"""LensLaw (lens_model/laws.py): L(D) = B / (s F + D^beta) + E with an NTK term F per model.

Reduction to the rectified law (no F, constant F, per-model scale), recovery of a known shared
scale, and the point of sharing it: with few probes per curve it extrapolates better."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lens_model import LAWS, FitWarning, LensLaw, RectifiedLaw
from tests.conftest import probe_result, rectified_loss

SIZES = np.array([0] + [200 * 2**i for i in range(11)], dtype=float)  # 0, 200, ..., 204800
FEW = np.array([0, 200, 400, 800], dtype=float)  # a cheap ladder: zero-shot + three probes
TARGET = 1_638_400.0
SCALE = 4.0


def lens_curves(sizes, seed: int, n: int = 8, scale: float = SCALE, noise: float = 0.003):
    """Curves of B / (s F_m + D^beta) + E, i.e. rectified with D_l = s F_m; returns
    (f_term, params, noisy losses)."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.5, 20.0, n)
    e = rng.uniform(0.6, 1.5, n)
    zero_shot = e + rng.uniform(1.0, 3.0, n)
    params = {"d_l": scale * f, "beta": rng.uniform(0.35, 0.7, n), "e": e}
    params["b"] = (zero_shot - e) * params["d_l"]
    losses = rectified_loss(sizes, **params) * np.exp(noise * rng.standard_normal((n, len(sizes))))
    return f, params, losses


def quiet(fit):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        return fit()


def test_registered():
    assert LAWS.get("lens") is LensLaw


def test_without_f_term_is_the_rectified_law():
    _, _, losses = lens_curves(SIZES, seed=1, n=4)
    lens = quiet(lambda: LensLaw().fit(SIZES, losses))
    rect = quiet(lambda: RectifiedLaw().fit(SIZES, losses))
    q = [0, 1000, TARGET]
    np.testing.assert_array_equal(lens.predict(q), rect.predict(q))
    np.testing.assert_array_equal(lens.predict_interval(q)[1], rect.predict_interval(q)[1])
    assert lens.scale_ is None and set(rect.params_) <= set(lens.params_)


@pytest.mark.parametrize("f_value", [1.0, 37.5])
def test_constant_f_per_model_scale_is_the_rectified_law(f_value):
    _, _, losses = lens_curves(SIZES, seed=2, n=4)
    f = np.full(4, f_value)
    lens = quiet(lambda: LensLaw(scale="per_model").fit(SIZES, losses, f_term=f))
    rect = quiet(lambda: RectifiedLaw().fit(SIZES, losses))
    np.testing.assert_array_equal(lens.predict([TARGET]), rect.predict([TARGET]))
    np.testing.assert_allclose(lens.scale_ * f_value, rect.params_["D_l"], rtol=1e-12)
    np.testing.assert_array_equal(lens.rmse_log_, rect.rmse_log_)


def test_shared_scale_recovers_known_scale():
    f, params, losses = lens_curves(SIZES, seed=3)
    law = quiet(lambda: LensLaw(scale="shared").fit(SIZES, losses, f_term=f))
    assert law.scale_ == pytest.approx(SCALE, rel=0.05)
    assert law.converged_.all() and law.rmse_log_.max() < 0.01
    np.testing.assert_allclose(law.params_["D_l"], law.scale_ * f, rtol=1e-9)
    np.testing.assert_allclose(law.params_["beta"], params["beta"], rtol=0.05)
    true = rectified_loss([TARGET], **params)[:, 0]
    assert np.max(np.abs(law.predict([TARGET])[:, 0] / true - 1)) < 0.03
    lo, hi = law.predict_interval([TARGET], level=0.99)
    assert np.all(lo[:, 0] < true) and np.all(true < hi[:, 0])


def test_shared_scale_single_curve_and_limits():
    f, params, losses = lens_curves(SIZES, seed=4, n=1)
    law = quiet(lambda: LensLaw().fit(SIZES, losses[0], f_term=float(f[0])))
    assert isinstance(law.params_["scale"], float)
    # L(0) is the zero-shot loss A and L(inf) -> E
    a = params["b"][0] / params["d_l"][0] + params["e"][0]
    assert law.predict([0.0])[0] == pytest.approx(a, rel=0.02)
    assert law.predict([1e30])[0] == pytest.approx(law.params_["E"], rel=1e-6)


@pytest.mark.slow
def test_shared_scale_extrapolates_better_from_few_points():
    """Three probes + zero-shot per curve: a per-model scale (4 free parameters on 4 points)
    has no information on the knee; the shared scale ties it to F and the other curves."""
    shared_err, per_model_err = [], []
    for seed in range(4):
        f, params, losses = lens_curves(FEW, seed=10 + seed)
        true = rectified_loss([TARGET], **params)[:, 0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)  # 4 points, 4 parameters: may flag
            shared = LensLaw(scale="shared").fit(FEW, losses, f_term=f)
            per_model = LensLaw(scale="per_model").fit(FEW, losses, f_term=f)
        shared_err.append(np.mean(np.abs(np.log(shared.predict([TARGET])[:, 0] / true))))
        per_model_err.append(np.mean(np.abs(np.log(per_model.predict([TARGET])[:, 0] / true))))
        assert shared.scale_ == pytest.approx(SCALE, rel=0.5)
    assert np.mean(shared_err) < 0.85 * np.mean(per_model_err)


def test_scale_at_search_edge_is_flagged():
    f, _, losses = lens_curves(SIZES, seed=5, n=3)
    with pytest.warns(FitWarning, match="edge of its search interval"):
        law = LensLaw(log_scale_bounds=(-12.0, -10.0), n_grid=5).fit(SIZES, losses, f_term=f)
    assert not law.converged_.any()


def test_bad_input():
    f, _, losses = lens_curves(SIZES, seed=6, n=3)
    with pytest.raises(ValueError, match="one value per curve"):
        LensLaw().fit(SIZES, losses, f_term=f[:2])
    with pytest.raises(ValueError, match="finite and > 0"):
        LensLaw().fit(SIZES, losses, f_term=np.array([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="finite and > 0"):
        LensLaw().fit(SIZES, losses, f_term=np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="scale must be"):
        LensLaw(scale="global").fit(SIZES, losses, f_term=f)
    with pytest.raises(ValueError, match="low < high"):
        LensLaw(log_scale_bounds=(1.0, 1.0)).fit(SIZES, losses, f_term=f)
    with pytest.raises(RuntimeError, match="not fitted"):
        LensLaw().predict([1.0])


def test_lens_selector_uses_f_when_every_candidate_has_it(synthetic_table, synthetic_params):
    """With F present, ``Lens`` predicts with the LensLLM law (shared scale, zero-shot
    included); without F it keeps the local slope; F built from each curve's true knee
    makes the law fit the rectified curves."""
    from lens_model.selectors import Lens, TableProbes
    from tests.conftest import TARGET_SIZE

    t = synthetic_table
    budget = 25_600
    # F proportional to each model's true pre-learned size D_l: the ideal kernel feature
    f = np.asarray(synthetic_params["d_l"]) * 3.0
    with_f = TableProbes(t.sizes, t.losses, t.model_sizes, max_size=budget, f_terms=f)
    without = TableProbes(t.sizes, t.losses, t.model_sizes, max_size=budget)
    sel_f = Lens().select(with_f, budget=budget, target_size=TARGET_SIZE)
    sel = Lens().select(without, budget=budget, target_size=TARGET_SIZE)
    assert (sel_f.predictor, sel.predictor) == ("lens_law", "local_slope")
    assert all(d == 0 or (m, 0) in with_f.probes for m, d in with_f.probes)  # zero-shot read
    true = t.losses_at(TARGET_SIZE)
    err_f = np.abs(np.log(sel_f.predictions / true)).mean()
    err = np.abs(np.log(sel.predictions / true)).mean()
    assert err_f < err  # the right F and a shared scale beat the local slope here
    assert np.all(sel_f.lower <= sel_f.predictions) and np.all(sel_f.predictions <= sel_f.upper)
    # zero-shot costs nothing: the F path spends what the plain one does
    w = np.asarray(t.model_sizes)
    assert sel_f.cost(w, TARGET_SIZE) == pytest.approx(sel.cost(w, TARGET_SIZE))


def test_lens_selector_refuses_lens_law_without_f(synthetic_table):
    from lens_model.selectors import Lens, TableProbes

    t = synthetic_table
    source = TableProbes(t.sizes, t.losses, t.model_sizes, max_size=25_600)
    with pytest.raises(ValueError, match="needs F for every candidate"):
        Lens(predictor="lens_law").select(source, budget=25_600, target_size=1_638_400)
    with pytest.raises(ValueError, match="predictor must be one of"):
        Lens(predictor="ntk")


def test_selection_ranks_with_f_unless_the_config_says_not(synthetic_table, synthetic_params):
    from tasks.fit import fit_and_select

    t = synthetic_table
    probes = {
        name: [
            probe_result(name, int(d), float(loss))
            for d, loss in zip(t.sizes, row, strict=True)
            if d <= 25_600
        ]
        for name, row in zip(t.models, t.losses, strict=True)
    }
    n_params = dict(zip(t.models, t.model_sizes, strict=True))
    f_terms = {name: 3.0 * d_l for name, d_l in zip(t.models, synthetic_params["d_l"], strict=True)}
    kwargs = {"target_size": 1_638_400, "budget": 25_600, "selector": "Lens", "f_terms": f_terms}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fit_and_select(probes, n_params, **kwargs).predictor == "lens_law"
        off = fit_and_select(probes, n_params, rank_with_f=False, **kwargs)
        assert off.predictor == "local_slope"
        assert "lens" in next(iter(off.candidates.values())).laws  # F still reported
        partial = dict(list(f_terms.items())[:-1])  # one candidate without F: none use it
        assert (
            fit_and_select(probes, n_params, **{**kwargs, "f_terms": partial}).predictor
            == "local_slope"
        )


def test_lens_keeps_the_local_slope_when_the_law_with_f_would_be_underdetermined(
    synthetic_table,
    synthetic_params,
):
    """Two first-round sizes + zero-shot = 3 points per curve for 3 parameters per curve plus
    the shared scale: an exact fit with an unbounded interval, so F is not used."""
    from lens_model.selectors import Lens, TableProbes

    t = synthetic_table
    budget = 3_200  # first round 3200 and 800 (200 x 4 = 800, 800 / 4 = 200 -> 3 sizes)
    f = np.asarray(synthetic_params["d_l"])
    short = TableProbes(t.sizes, t.losses, t.model_sizes, max_size=800, f_terms=f)
    sel = Lens().select(short, budget=800, target_size=1_638_400)  # first round 200, 800
    assert sel.predictor == "local_slope"
    with pytest.raises(ValueError, match="at least 3 first-round sizes"):
        Lens(predictor="lens_law").select(short, budget=800, target_size=1_638_400)
    longer = TableProbes(t.sizes, t.losses, t.model_sizes, max_size=budget, f_terms=f)
    sel = Lens(interval="heuristic").select(longer, budget=budget, target_size=1_638_400)
    assert sel.predictor == "lens_law"
    assert np.all(np.isfinite(sel.lower)) and np.all(np.isfinite(sel.upper))
