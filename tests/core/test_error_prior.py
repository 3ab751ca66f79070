"""The cross-task error prior (lens_model/error_prior.py): the conjugate update, the marginal
likelihood, empirical-Bayes recovery of known hyper-parameters, and calibrated coverage of the
posterior predictive on synthetic tasks drawn from a known error model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from lens_model.error_prior import NormalInverseGamma, fit_prior

TRUE = NormalInverseGamma(m=0.3, kappa=2.0, a=4.0, b=3.0)


def _draw_groups(prior: NormalInverseGamma, n_groups: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    var = 1.0 / rng.gamma(prior.a, 1.0 / prior.b, n_groups)
    mu = rng.normal(prior.m, np.sqrt(var / prior.kappa))
    return [rng.normal(mu[g], math.sqrt(var[g]), size) for g in range(n_groups)]


def test_sequential_updates_equal_one_batch_update():
    r = np.array([0.4, -1.2, 2.0, 0.1, 0.7])
    one = TRUE.update(r)
    step = TRUE
    for x in r:
        step = step.update([x])
    for field in ("m", "kappa", "a", "b", "n"):
        assert getattr(step, field) == pytest.approx(getattr(one, field))
    assert TRUE.update([]) is TRUE


def test_vectorised_total_equals_the_sum_of_group_marginals():
    from lens_model.error_prior import _sufficient, _total_log_marginal

    groups = [np.array([0.4, -1.2, 2.0]), np.array([0.5]), np.array([1.0, 1.5])]
    params = np.array([TRUE.m, math.log(TRUE.kappa), math.log(TRUE.a - 1), math.log(TRUE.b)])
    total = _total_log_marginal(params, *_sufficient(groups))
    assert total == pytest.approx(sum(TRUE.log_marginal(g) for g in groups), rel=1e-12)


def test_marginal_likelihood_is_the_product_of_sequential_predictive_densities():
    r = np.array([0.4, -1.2, 2.0, 0.1])
    chain, state = 0.0, TRUE
    for x in r:
        pred = state.predictive()
        chain += student_t.logpdf(x, pred.df, pred.loc, pred.scale)
        state = state.update([x])
    assert TRUE.log_marginal(r) == pytest.approx(chain, rel=1e-10)


def test_the_prior_counts_as_2a_pseudo_errors_and_own_errors_take_over():
    assert TRUE.predictive().df == 2 * TRUE.a
    assert TRUE.update(np.zeros(3)).predictive().df == 2 * TRUE.a + 3
    # many errors of sd 0.1 around 1.0: the predictive follows them, not the prior
    rng = np.random.default_rng(0)
    post = TRUE.update(1.0 + 0.1 * rng.standard_normal(20_000)).predictive()
    assert post.loc == pytest.approx(1.0, abs=0.01)
    assert post.sd == pytest.approx(0.1, rel=0.05)


def test_errors_larger_than_the_prior_expects_widen_the_interval():
    calm = TRUE.update([0.3, 0.2, 0.4]).predictive().interval(0.9)
    wild = TRUE.update([6.0, -5.0, 7.0]).predictive().interval(0.9)
    assert wild[1] - wild[0] > 2 * (calm[1] - calm[0])


def test_empirical_bayes_recovers_known_hyperparameters():
    groups = _draw_groups(TRUE, n_groups=400, size=4, seed=1)
    fitted = fit_prior(groups, seed=0)
    assert fitted.m == pytest.approx(TRUE.m, abs=0.15)
    # the predictive spread of a new group's error is what intervals use: recovered to 10 %
    assert fitted.predictive().sd == pytest.approx(TRUE.predictive().sd, rel=0.1)
    assert fit_prior(groups, seed=0) == fitted  # deterministic


@pytest.mark.parametrize("n_own", [0, 3, 12])
def test_posterior_predictive_intervals_are_calibrated_on_new_tasks(n_own):
    """Fit the prior on 300 tasks, then on 2000 new tasks from the same model: the 50, 80 and
    90 % intervals built from each task's first ``n_own`` errors hold its next error at the
    nominal rate."""
    fitted = fit_prior(_draw_groups(TRUE, n_groups=1000, size=4, seed=2), seed=0)
    new = _draw_groups(TRUE, n_groups=4000, size=n_own + 1, seed=3)
    for level in (0.5, 0.8, 0.9):
        held = []
        for g in new:
            lo, hi = fitted.update(g[:n_own]).predictive().interval(level)
            held.append(lo <= g[-1] <= hi)
        # 4000 tasks: a standard error of at most 0.008; the fitted prior adds its own error
        assert np.mean(held) == pytest.approx(level, abs=0.03)


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="at least two groups"):
        fit_prior([[0.1, 0.2]])
    with pytest.raises(ValueError, match="finite"):
        TRUE.update([0.1, float("nan")])
    with pytest.raises(ValueError, match="positive kappa"):
        NormalInverseGamma(m=0.0, kappa=0.0, a=2.0, b=1.0)


def test_a_weighted_log_marginal_counts_an_error_as_that_many_copies():
    prior = NormalInverseGamma(m=0.1, kappa=2.0, a=3.0, b=0.5)
    weighted = prior.log_marginal([0.4, -0.2], weights=[2.0, 1.0])
    assert weighted == pytest.approx(prior.log_marginal([0.4, 0.4, -0.2]))
    assert prior.log_marginal([], weights=[]) == 0.0
