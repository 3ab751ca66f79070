"""Heavy-tailed spectral metrics of weight matrices (lens_model.weight_spectrum)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lens_model.weight_spectrum import (
    eigenvalues,
    fit_power_law,
    layer_spectra,
    layer_spectrum,
    summarize,
)


def pareto(alpha: float, n: int, xmin: float, rng: np.random.Generator) -> np.ndarray:
    """Draws from the density ``p(x) ~ x^(-alpha)``, ``x >= xmin`` (numpy's pareto is the
    Lomax law with shape ``alpha - 1``)."""
    return (rng.pareto(alpha - 1.0, n) + 1.0) * xmin


def with_spectrum(eigs: np.ndarray, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """``W = U diag(s) V^T`` (``n_rows x len(eigs)``) whose ``W^T W`` has ``eigs``."""
    m = eigs.size
    u, _ = np.linalg.qr(rng.standard_normal((n_rows, m)))
    v, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return u @ np.diag(np.sqrt(eigs)) @ v.T


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_fit_recovers_a_known_exponent_and_where_the_tail_starts(alpha):
    rng = np.random.default_rng(0)
    # a bulk below 1 that is not a power law, then 3000 Pareto draws from xmin = 1
    values = np.concatenate([rng.uniform(0.05, 1.0, 2000), pareto(alpha, 3000, 1.0, rng)])
    fit = fit_power_law(rng.permutation(values))
    # the KS choice keeps the bulk out of the tail and most of the power law in it
    assert 1.0 <= fit.xmin <= 2.0
    assert 1000 <= fit.n_tail <= 3000
    # the MLE's standard error is (alpha - 1) / sqrt(n_tail) <= 0.095: 0.15 is over 1.5 of them
    assert fit.alpha == pytest.approx(alpha, abs=0.15)
    assert 0 < fit.ks_distance < 0.05


def test_alpha_of_a_matrix_built_with_a_known_heavy_tailed_spectrum():
    rng = np.random.default_rng(1)
    eigs = pareto(3.0, 400, 0.5, rng)
    w = with_spectrum(eigs, 800, rng)
    np.testing.assert_allclose(eigenvalues(w), np.sort(eigs), rtol=1e-8)
    (layer,) = layer_spectra({"w": w})
    # 400 eigenvalues: standard error 2 / sqrt(400) = 0.1; tolerance 3 of them
    assert layer.alpha == pytest.approx(3.0, abs=0.3)
    assert layer.alpha_weighted == pytest.approx(layer.alpha * math.log10(eigs.max()))


def test_spectral_norm_of_a_matrix_with_known_singular_values():
    rng = np.random.default_rng(2)
    singular = np.linspace(1.0, 7.0, 50)
    w = with_spectrum(singular**2, 120, rng)
    np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False).max(), 7.0)
    layer = layer_spectrum("w", eigenvalues(w), w.shape)
    # weightwatcher's convention: lambda = s^2, not divided by N (the module docstring)
    assert layer.lambda_max == pytest.approx(49.0)
    assert layer.log_spectral_norm == pytest.approx(math.log10(49.0))
    assert layer.alpha_weighted == pytest.approx(layer.alpha * math.log10(49.0))
    assert (layer.rows, layer.cols, layer.n_eigenvalues) == (120, 50, 50)


def test_transposition_changes_nothing_and_scale_only_the_norms():
    rng = np.random.default_rng(3)
    w = with_spectrum(pareto(3.5, 200, 1.0, rng), 300, rng)
    plain, flipped, scaled = layer_spectra({"a": w, "b": w.T, "c": 10.0 * w})
    for field in ("alpha", "xmin", "ks_distance", "n_tail", "lambda_max", "alpha_weighted"):
        assert getattr(flipped, field) == pytest.approx(getattr(plain, field), rel=1e-9)
    assert (flipped.rows, flipped.cols) == (200, 300)
    assert scaled.alpha == pytest.approx(plain.alpha, rel=1e-9)
    assert scaled.n_tail == plain.n_tail
    assert scaled.xmin == pytest.approx(100.0 * plain.xmin, rel=1e-9)
    assert scaled.lambda_max == pytest.approx(100.0 * plain.lambda_max, rel=1e-9)
    assert scaled.log_spectral_norm == pytest.approx(plain.log_spectral_norm + 2.0)
    assert scaled.alpha_weighted == pytest.approx(plain.alpha * (plain.log_spectral_norm + 2.0))


def test_batched_spectra_equal_one_at_a_time_and_keep_the_order():
    rng = np.random.default_rng(4)
    mats = {
        "q": rng.standard_normal((64, 32)),
        "up": rng.standard_normal((32, 96)),
        "k": rng.standard_normal((64, 32)),
    }
    layers = layer_spectra(mats)
    assert [layer.name for layer in layers] == ["q", "up", "k"]
    for layer in layers:
        alone = layer_spectrum(layer.name, eigenvalues(mats[layer.name]), mats[layer.name].shape)
        assert layer.alpha == pytest.approx(alone.alpha, rel=1e-12)
        assert layer.lambda_max == pytest.approx(alone.lambda_max, rel=1e-12)
    means = summarize(layers)
    assert means["alpha"] == pytest.approx(np.mean([layer.alpha for layer in layers]))
    assert means["alpha_weighted"] == pytest.approx(np.mean([x.alpha_weighted for x in layers]))
    assert means["log_spectral_norm"] == pytest.approx(
        np.mean([x.log_spectral_norm for x in layers])
    )


def test_zero_eigenvalues_of_a_rank_deficient_matrix_are_left_out():
    rng = np.random.default_rng(5)
    low_rank = rng.standard_normal((80, 30)) @ rng.standard_normal((30, 60))
    (layer,) = layer_spectra({"w": low_rank})
    assert layer.n_eigenvalues == 30


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: eigenvalues(np.ones(5)), "2-D weight matrix"),
        (lambda: eigenvalues(np.full((4, 4), np.nan)), "NaN or inf"),
        (lambda: fit_power_law(np.arange(1.0, 6.0)), "at least min_tail=10 values, got 5"),
        (lambda: fit_power_law(np.arange(-1.0, 19.0)), "positive finite"),
        (lambda: fit_power_law(np.ones((4, 4))), "1-D array"),
        (lambda: fit_power_law(np.arange(1.0, 20.0), min_tail=1), "at least 2"),
        (lambda: fit_power_law(np.ones(20)), "equal values"),
        (lambda: layer_spectra({}), "no weight matrices"),
        (lambda: layer_spectra({"conv": np.ones((2, 3, 4))}), "'conv' has shape"),
        (lambda: layer_spectra({"tiny": np.eye(6)}), "'tiny' 6x6 has 6 nonzero eigenvalues"),
        (lambda: summarize([]), "no layers"),
    ],
)
def test_bad_inputs_say_what_is_wrong(call, match):
    with pytest.raises(ValueError, match=match):
        call()
