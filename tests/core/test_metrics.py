"""Selection metrics of the replay protocol (lens_model/metrics.py) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from lens_model import pearson_correlation, probe_cost, relative_accuracy, rmse_log


# -- PearCorr --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_pearson_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    scores, truth = rng.normal(size=30), rng.normal(size=30)
    truth += 0.5 * scores
    want = np.corrcoef(scores, truth)[0, 1]
    assert pearson_correlation(scores, truth) == pytest.approx(want, abs=1e-12)


def test_pearson_hand_computed():
    # x = [1, 2, 3], y = [1, 3, 2]: deviations (-1, 0, 1) and (-1, 1, 0): r = 1 / (sqrt2 sqrt2)
    assert pearson_correlation([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5, abs=1e-15)
    assert pearson_correlation([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0, abs=1e-15)


def test_pearson_is_computed_in_float64():
    # deviations of 1 on top of 1e8 vanish in float32 (spacing 8 there); float64 keeps them
    scores = 1e8 + np.array([0.0, 1.0, 2.0, 3.0])
    assert pearson_correlation(scores, [0.0, 1.0, 2.0, 3.0]) == pytest.approx(1.0, abs=1e-9)
    assert pearson_correlation(scores.astype(np.float32), [0.0, 1.0, 2.0, 3.0]) != 1.0


def test_pearson_invariant_to_affine_maps():
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=10), rng.normal(size=10)
    r = pearson_correlation(s, t)
    assert pearson_correlation(3 * s + 7, t) == pytest.approx(r, abs=1e-12)
    assert pearson_correlation(-s, t) == pytest.approx(-r, abs=1e-12)


def test_pearson_of_a_constant_score_is_nan_not_zero():
    assert np.isnan(pearson_correlation([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))


@pytest.mark.parametrize(
    ("scores", "truth", "match"),
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0], "equal length"),
        ([1.0], [1.0], "equal length >= 2"),
        ([[1.0, 2.0]], [[1.0, 2.0]], "1-D"),
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "finite"),
        ([1.0, 2.0, 3.0], [1.0, np.inf, 3.0], "finite"),
    ],
)
def test_pearson_bad_input(scores, truth, match):
    with pytest.raises(ValueError, match=match):
        pearson_correlation(np.array(scores), np.array(truth))


# -- RelAcc ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("selected", "want"), [(0, 0.0), (1, 1.0), (2, 0.5), (3, 0.25)])
def test_relative_accuracy_hand_computed(selected, want):
    truth = [3.0, 1.0, 2.0, 2.5]  # worst 3, best 1: RelAcc = (3 - L) / 2
    assert relative_accuracy(selected, truth) == pytest.approx(want, abs=1e-15)


def test_relative_accuracy_when_all_models_tie():
    assert relative_accuracy(1, [2.0, 2.0, 2.0]) == 1.0


# -- Cost ------------------------------------------------------------------------------------
def test_cost_hand_computed():
    # sizes 1 and 3 (params), target 100: (1*100 + 3*50 + 3*0) / ((1 + 3) * 100) = 0.625
    probes = {(0, 100), (1, 50), (1, 0)}
    assert probe_cost(probes, np.array([1.0, 3.0]), 100) == pytest.approx(0.625, abs=1e-15)


def test_cost_weights_by_model_size():
    # the same probe costs more on the larger model
    sizes = np.array([1e8, 7e9])
    small, large = probe_cost({(0, 800)}, sizes, 1600), probe_cost({(1, 800)}, sizes, 1600)
    assert large / small == pytest.approx(70.0)
    assert small + large == pytest.approx(0.5)  # everyone at half the target: half the compute


def test_cost_of_fine_tuning_everyone_on_the_target_is_one():
    sizes = np.array([1.0, 2.0, 5.0])
    assert probe_cost({(m, 1000) for m in range(3)}, sizes, 1000) == pytest.approx(1.0)
    assert probe_cost(set(), sizes, 1000) == 0.0


# -- fit error -------------------------------------------------------------------------------
def test_rmse_log_hand_computed():
    observed = np.array([[1.0, np.e, np.nan], [1.0, 1.0, 1.0]])
    predicted = np.array([[np.e, np.e, 5.0], [1.0, 1.0, np.exp(0.3)]])
    # row 0: log errors (1, 0), NaN ignored -> sqrt(1/2); row 1: (0, 0, 0.3) -> sqrt(0.03)
    np.testing.assert_allclose(rmse_log(predicted, observed), [np.sqrt(0.5), np.sqrt(0.03)])
