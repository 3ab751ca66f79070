"""Scaling laws (lens_model/laws.py): recovery, limits, intervals, convergence flags, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lens_model import LAWS, FitWarning, RectifiedLaw, VanillaLaw
from tests.conftest import rectified_loss

SIZES = np.array([0] + [200 * 2**i for i in range(11)], dtype=float)  # 0, 200, ..., 204800
FAR = 100 * SIZES.max()  # extrapolate 100x beyond the largest probed size
NOISE = 0.004  # multiplicative (log-space) noise; real rectified fits leave ~0.0065 RMS
RECT = {  # four curves with different knees, slopes and floors
    "b": np.array([60.0, 200.0, 30.0, 500.0]),
    "d_l": np.array([20.0, 50.0, 10.0, 300.0]),
    "beta": np.array([0.5, 0.6, 0.4, 0.7]),
    "e": np.array([1.0, 0.8, 1.5, 0.5]),
}
VAN = {"b": np.array([20.0, 50.0, 8.0]), "beta": np.array([0.3, 0.5, 0.25]), "e": [1.0, 0.6, 1.2]}


def vanilla_loss(sizes, b, beta, e) -> np.ndarray:
    d = np.asarray(sizes, dtype=float)[None, :]
    return np.asarray(b)[:, None] / d ** np.asarray(beta)[:, None] + np.asarray(e)[:, None]


def curves_for(name: str) -> tuple[type, np.ndarray, np.ndarray]:
    """The law class and noiseless curves of its own family (rectified for laws that reduce to
    it), on the sizes it uses."""
    law_cls = LAWS.get(name)
    if law_cls is VanillaLaw:
        return law_cls, SIZES[1:], vanilla_loss(SIZES[1:], **VAN)
    sizes = SIZES if law_cls.uses_zero_shot else SIZES[1:]
    return law_cls, sizes, rectified_loss(sizes, **RECT)


def noisy(losses: np.ndarray, sigma: float = NOISE, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal(np.shape(losses))
    return losses * np.exp(sigma * z)


def quiet_fit(law, sizes, losses):
    """Fit and fail the test on any FitWarning (these curves must converge)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        return law.fit(sizes, losses)


def rel_err(got, want) -> np.ndarray:
    return np.abs(np.asarray(got) / np.asarray(want) - 1)


# -- recovery of known parameters ------------------------------------------------------------
def test_rectified_recovers_parameters_batch():
    law = quiet_fit(RectifiedLaw(), SIZES, noisy(rectified_loss(SIZES, **RECT)))
    p = law.params_
    assert law.converged_.shape == (4,) and law.converged_.all()
    assert rel_err(p["beta"], RECT["beta"]).max() < 0.06
    assert rel_err(p["E"], RECT["e"]).max() < 0.04
    assert rel_err(p["D_l"], RECT["d_l"]).max() < 0.3
    assert rel_err(p["B"], RECT["b"]).max() < 0.3
    zero_shot = RECT["b"] / RECT["d_l"] + RECT["e"]
    assert rel_err(p["zero_shot_loss"], zero_shot).max() < 0.03
    truth_far = rectified_loss([FAR], **RECT)[:, 0]
    assert law.predict([FAR]).shape == (4, 1)
    assert rel_err(law.predict([FAR])[:, 0], truth_far).max() < 0.04
    assert np.all(law.rmse_log_ < 2 * NOISE)


def test_rectified_recovers_parameters_single_curve():
    one = {k: v[:1] for k, v in RECT.items()}
    losses = noisy(rectified_loss(SIZES, **one))[0]
    law = quiet_fit(RectifiedLaw(), SIZES, losses)
    assert isinstance(law.params_["beta"], float)
    assert law.params_["beta"] == pytest.approx(0.5, rel=0.06)
    assert law.params_["E"] == pytest.approx(1.0, rel=0.04)
    assert law.params_["D_l"] == pytest.approx(20.0, rel=0.3)
    pred = law.predict([FAR])
    assert pred.shape == (1,)
    assert pred[0] == pytest.approx(rectified_loss([FAR], **one)[0, 0], rel=0.04)


def test_vanilla_recovers_parameters():
    sizes = SIZES[1:]
    law = quiet_fit(VanillaLaw(), sizes, noisy(vanilla_loss(sizes, **VAN)))
    p = law.params_
    assert law.converged_.all()
    assert rel_err(p["beta"], VAN["beta"]).max() < 0.1
    assert rel_err(p["E"], VAN["e"]).max() < 0.08
    assert rel_err(p["B"], VAN["b"]).max() < 0.15
    truth_far = vanilla_loss([FAR], **VAN)[:, 0]
    assert rel_err(law.predict([FAR])[:, 0], truth_far).max() < 0.05


def test_exact_curve_is_fitted_exactly():
    one = {k: v[1:2] for k, v in RECT.items()}
    law = quiet_fit(RectifiedLaw(), SIZES, rectified_loss(SIZES, **one)[0])
    for name, want in (("B", 200.0), ("D_l", 50.0), ("beta", 0.6), ("E", 0.8)):
        assert law.params_[name] == pytest.approx(want, rel=1e-3)
    assert law.rmse_log_[0] < 1e-5


def test_batch_fit_equals_single_fits():
    losses = noisy(rectified_loss(SIZES, **RECT))
    batch = quiet_fit(RectifiedLaw(), SIZES, losses)
    for i in range(len(losses)):
        single = quiet_fit(RectifiedLaw(), SIZES, losses[i])
        assert single.predict([FAR])[0] == pytest.approx(batch.predict([FAR])[i, 0], rel=1e-6)


def test_fit_is_deterministic_given_a_seed():
    losses = noisy(rectified_loss(SIZES, **RECT))
    a = RectifiedLaw(seed=3).fit(SIZES, losses)
    b = RectifiedLaw(seed=3).fit(SIZES, losses)
    np.testing.assert_array_equal(a.theta_, b.theta_)


def test_loss_scale_invariance():
    """Multiplying every loss by c multiplies every prediction by c (B and E scale with it)."""
    losses = noisy(rectified_loss(SIZES, **RECT))
    base = quiet_fit(RectifiedLaw(), SIZES, losses)
    scaled = quiet_fit(RectifiedLaw(), SIZES, 3.0 * losses)
    np.testing.assert_allclose(scaled.predict([FAR, 1e4]), 3.0 * base.predict([FAR, 1e4]), 1e-4)
    np.testing.assert_allclose(scaled.params_["beta"], base.params_["beta"], rtol=1e-3)


def test_nan_points_are_ignored():
    losses = noisy(rectified_loss(SIZES, **RECT))[0]
    with_gap = losses.copy()
    with_gap[4] = np.nan
    keep = np.arange(len(SIZES)) != 4
    a = quiet_fit(RectifiedLaw(), SIZES, with_gap)
    b = quiet_fit(RectifiedLaw(), SIZES[keep], losses[keep])
    assert a.n_points_[0] == len(SIZES) - 1
    assert a.predict([FAR])[0] == pytest.approx(b.predict([FAR])[0], rel=1e-6)


def test_vanilla_ignores_the_zero_shot_point():
    losses = noisy(vanilla_loss(SIZES[1:], **VAN))[0]
    with_zero = np.concatenate([[99.0], losses])  # any zero-shot loss: L(0) is infinite here
    a = quiet_fit(VanillaLaw(), SIZES, with_zero)
    b = quiet_fit(VanillaLaw(), SIZES[1:], losses)
    assert a.n_points_[0] == len(SIZES) - 1
    assert a.predict([FAR])[0] == pytest.approx(b.predict([FAR])[0], rel=1e-9)


# -- limits ----------------------------------------------------------------------------------
def test_rectified_limits():
    law = quiet_fit(RectifiedLaw(), SIZES, noisy(rectified_loss(SIZES, **RECT)))
    p = law.params_
    zero_shot = p["B"] / p["D_l"] + p["E"]  # L(0) = B / D_l + E
    np.testing.assert_allclose(p["zero_shot_loss"], zero_shot, rtol=1e-9)
    np.testing.assert_allclose(law.predict([0])[:, 0], zero_shot, rtol=1e-4)
    np.testing.assert_allclose(law.predict([1e-6])[:, 0], zero_shot, rtol=1e-3)
    np.testing.assert_allclose(law.predict([1e40])[:, 0], p["E"], rtol=1e-6)  # L(inf) = E
    # in between, predict is the law written with the fitted parameters
    d = np.array([300.0, 5e4, 3e6])
    by_hand = p["B"][:, None] / (p["D_l"][:, None] + d ** p["beta"][:, None]) + p["E"][:, None]
    np.testing.assert_allclose(law.predict(d), by_hand, rtol=1e-8)


def test_vanilla_limit_at_infinity():
    law = quiet_fit(VanillaLaw(), SIZES[1:], noisy(vanilla_loss(SIZES[1:], **VAN)))
    p = law.params_
    np.testing.assert_allclose(law.predict([1e60])[:, 0], p["E"], rtol=1e-6)
    d = np.array([300.0, 5e4, 3e6])
    by_hand = p["B"][:, None] / d ** p["beta"][:, None] + p["E"][:, None]
    np.testing.assert_allclose(law.predict(d), by_hand, rtol=1e-8)


@pytest.mark.parametrize("name", LAWS.names())
def test_every_law_predicts_a_decreasing_curve_above_its_floor(name):
    law_cls, sizes, clean = curves_for(name)
    losses = noisy(clean)
    law = law_cls().fit(sizes, losses)
    assert set(law.param_names) <= set(law.params_)
    grid = np.geomspace(100, 1e9, 30)
    pred = law.predict(grid)
    assert pred.shape == (len(losses), 30) and np.all(np.isfinite(pred))
    assert np.all(np.diff(pred, axis=1) <= 1e-12)
    assert np.all(pred > law.params_["E"][:, None])
    assert np.all(law.params_["E"] <= losses.min(axis=1))


# -- intervals -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAWS.names())
def test_interval_contains_prediction_and_widens_with_noise(name):
    law_cls, sizes, clean = curves_for(name)
    widths = []
    for sigma in (0.002, 0.01, 0.04):
        # a tiny noise floor, so that the width reflects the residuals of the fit alone
        law = law_cls(noise_floor=1e-4).fit(sizes, noisy(clean, sigma, seed=1))
        pred = law.predict([1e4, FAR])
        lo, hi = law.predict_interval([1e4, FAR], level=0.9)
        assert lo.shape == hi.shape == pred.shape == (len(clean), 2)
        assert np.all(lo < pred) and np.all(pred < hi)
        narrow_lo, narrow_hi = law.predict_interval([1e4, FAR], level=0.5)
        assert np.all(lo < narrow_lo) and np.all(narrow_hi < hi)
        widths.append(np.log(hi / lo)[:, 1])
    assert np.all(widths[0] < widths[1]) and np.all(widths[1] < widths[2])


def test_noise_floor_keeps_intervals_open():
    """A curve fitted exactly still gets an interval at least as wide as the noise floor."""
    law = RectifiedLaw(noise_floor=0.01).fit(SIZES, rectified_loss(SIZES, **RECT))
    lo, hi = law.predict_interval([FAR], level=0.9)
    assert np.all(np.log(hi / lo) >= 2 * 1.6448 * 0.01 * (1 - 1e-6))


def test_single_curve_interval_shapes():
    losses = noisy(rectified_loss(SIZES, **RECT))[0]
    law = RectifiedLaw().fit(SIZES, losses)
    lo, hi = law.predict_interval([FAR])
    assert lo.shape == hi.shape == (1,)
    assert lo[0] < law.predict([FAR])[0] < hi[0]


# -- convergence -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAWS.names())
def test_non_convergence_warns_and_flags_without_nan(name):
    law_cls, sizes, clean = curves_for(name)
    losses = noisy(clean)
    with pytest.warns(FitWarning, match="did not converge"):
        law = law_cls(max_iter=1).fit(sizes, losses)
    assert law.converged_.dtype == bool and not law.converged_.any()
    # the best parameters found are kept, never replaced by NaN or a made-up value
    assert np.all(np.isfinite(law.theta_))
    assert all(np.all(np.isfinite(v)) for v in law.params_.values())
    assert np.all(np.isfinite(law.predict([FAR])))
    assert np.all(np.isfinite(law.rmse_log_))
    full = law_cls().fit(sizes, losses)
    assert full.converged_.all()
    assert np.all(full.rmse_log_ <= law.rmse_log_ + 1e-12)  # one step is no better than many


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAWS.names())
@pytest.mark.parametrize(
    ("sizes", "losses", "match"),
    [
        ([-200, 400, 800, 1600], [3.0, 2.0, 1.5, 1.2], "sizes must be >= 0"),
        ([200, 400, 800, 1600], [3.0, 0.0, 1.5, 1.2], "losses must be positive"),
        ([200, 400, 800, 1600], [3.0, -2.0, 1.5, 1.2], "losses must be positive"),
        ([200], [3.0], "needs at least"),
        ([200, 400, 800], [3.0, np.nan, np.nan], "needs at least"),
    ],
    ids=["negative-size", "zero-loss", "negative-loss", "too-few-points", "all-but-one-nan"],
)
def test_bad_input_raises(name, sizes, losses, match):
    with pytest.raises(ValueError, match=match):
        LAWS.get(name)().fit(np.array(sizes, dtype=float), np.array(losses))


def test_predict_before_fit_raises():
    with pytest.raises(RuntimeError, match="not fitted yet"):
        RectifiedLaw().predict([1e6])
    with pytest.raises(RuntimeError, match="not fitted yet"):
        VanillaLaw().predict_interval([1e6])


def test_nan_size_raises():
    losses = rectified_loss(SIZES, **RECT)[0, :5]
    sizes = SIZES[:5].copy()
    sizes[0] = np.nan
    with pytest.raises(ValueError, match="size"):
        RectifiedLaw().fit(sizes, losses)


def test_predict_negative_size_raises():
    law = RectifiedLaw().fit(SIZES, rectified_loss(SIZES, **RECT)[0])
    with pytest.raises(ValueError, match="size"):
        law.predict([-5.0])


# -- registry --------------------------------------------------------------------------------
def test_registry_contains_the_laws():
    assert LAWS.get("vanilla") is VanillaLaw and LAWS.get("rectified") is RectifiedLaw
    assert LAWS.get("Rectified") is RectifiedLaw  # case-insensitive


def test_registry_suggests_close_names():
    with pytest.raises(KeyError, match="Did you mean 'rectified'"):
        LAWS.get("rectifed")
    with pytest.raises(KeyError, match="unknown law 'quadratic'") as exc:
        LAWS.get("quadratic")
    assert "Did you mean" not in str(exc.value)
    assert "Known laws:" in str(exc.value) and "rectified" in str(exc.value)
