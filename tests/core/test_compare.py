"""The paired bootstrap that compares two models on the same test examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lens_model.compare import paired_bootstrap


def _losses(n=64, seed=0):
    rng = np.random.default_rng(seed)
    units = rng.integers(10, 60, n).astype(float)
    base = units * rng.uniform(0.8, 1.2, n)
    return base, units


def test_identical_models_are_a_coin_flip():
    base, units = _losses()
    out = paired_bootstrap(base, base, units)
    assert out.difference == 0 and out.p_better == 0.5
    assert out.difference_low == out.difference_high == 0


def test_a_clearly_better_model_is_confidently_better():
    base, units = _losses()
    out = paired_bootstrap(base * 0.9, base, units, scale=1 / math.log(2))
    assert out.p_better > 0.99 and out.difference < 0 and out.difference_high < 0
    assert out.challenger_loss == pytest.approx(0.9 * out.reference_loss)
    assert out.reference_loss == pytest.approx(base.sum() / units.sum() / math.log(2))


def test_pairing_sees_a_small_consistent_gain_that_unpaired_noise_would_hide():
    # every example improves by 1 %, while examples differ by +-20 %: paired, it is clear
    base, units = _losses(n=200)
    out = paired_bootstrap(base * 0.99, base, units)
    assert out.p_better > 0.99


def test_swapping_the_models_mirrors_the_result():
    base, units = _losses()
    noisy = base * np.random.default_rng(3).uniform(0.9, 1.08, len(base))
    a = paired_bootstrap(noisy, base, units, seed=1)
    b = paired_bootstrap(base, noisy, units, seed=1)
    assert a.p_better + b.p_better == pytest.approx(1.0)
    assert a.difference == pytest.approx(-b.difference)


def test_units_per_model_for_different_tokenizers():
    base, units = _losses()
    out = paired_bootstrap(base, base, [units, units * 2])
    assert out.challenger_loss == pytest.approx(2 * out.reference_loss)
    assert out.p_better == 0.0


def test_bad_input_is_refused():
    base, units = _losses()
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(base[:-1], base, units)
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap(np.r_[base[:-1], np.nan], base, units)
    with pytest.raises(ValueError, match="positive"):
        paired_bootstrap(base, base, np.zeros_like(units))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(base, base, units, level=1.0)
