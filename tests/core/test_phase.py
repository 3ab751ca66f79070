"""Power-phase detection and AtS extrapolation (lens_model/phase.py), checked against hand-worked
least-squares fits and the delta * std rule of Lin et al. (docs/replay.md)."""

from __future__ import annotations

import numpy as np
import pytest

from lens_model import detect_power_phase, extrapolate_power_phase, fit_power_phase

TARGET = 1_638_400


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Ordinary least squares by the closed form: slope = cov(x, y) / var(x)."""
    slope = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    return float(slope), float(y.mean() - slope * x.mean())


def rule(x, y, fitted: slice, candidate: int, delta: float = 5.0) -> tuple[bool, float]:
    """(accept?, |residual| / population std) of ``candidate`` against the line of ``fitted``."""
    slope, icpt = line_fit(x[fitted], y[fitted])
    spread = np.sqrt(np.mean((y[fitted] - (slope * x[fitted] + icpt)) ** 2))  # ddof = 0
    residual = abs(y[candidate] - (slope * x[candidate] + icpt))
    # a line through two points has spread 0: any point off it is rejected
    return residual <= delta * spread, residual / spread if spread > 0 else np.inf


def curve(sizes, offsets) -> tuple[np.ndarray, np.ndarray]:
    """Losses on the log-log line ln L = 1.5 - 0.1 ln D, moved by ``offsets`` (log space)."""
    sizes = np.asarray(sizes, dtype=float)
    return sizes, np.exp(1.5 - 0.1 * np.log(sizes) + np.asarray(offsets))


# -- hand-worked examples --------------------------------------------------------------------
def test_hand_worked_stop_at_the_knee():
    # Two pre-power points (200, 400) lie well above the line through the four largest.
    sizes, losses = curve(
        [200, 400, 800, 1600, 3200, 6400], [0.3, 0.08, 0.006, -0.004, 0.006, -0.003]
    )
    x, y = np.log(sizes), np.log(losses)
    # step 1: line through the k = 3 largest points (indices 3, 4, 5); point 2 is within 5 std
    accept, ratio = rule(x, y, slice(3, 6), 2)
    assert accept and ratio == pytest.approx(1.64, abs=0.01)
    # step 2: line through indices 2..5; point 1 is 17 std away: stop, keep 2..5
    accept, ratio = rule(x, y, slice(2, 6), 1)
    assert not accept and ratio == pytest.approx(17.06, abs=0.01)

    np.testing.assert_array_equal(detect_power_phase(sizes, losses), [2, 3, 4, 5])
    slope, icpt, idx = fit_power_phase(sizes, losses)
    np.testing.assert_array_equal(idx, [2, 3, 4, 5])
    want_slope, want_icpt = line_fit(x[2:], y[2:])
    assert slope == pytest.approx(want_slope, abs=1e-12)
    assert icpt == pytest.approx(want_icpt, abs=1e-12)
    assert slope == pytest.approx(-0.1, abs=0.01)
    want = np.exp(want_slope * np.log(TARGET) + want_icpt)
    assert extrapolate_power_phase(sizes, losses, TARGET) == pytest.approx(want, rel=1e-12)


def test_hand_worked_no_rejection_still_drops_the_smallest_point():
    sizes, losses = curve([200, 400, 800, 1600, 3200], [0.01, -0.01, 0.01, -0.01, 0.01])
    x, y = np.log(sizes), np.log(losses)
    assert rule(x, y, slice(2, 5), 1)[0]  # point 1 accepted (1.4 std)
    assert rule(x, y, slice(1, 5), 0)[0]  # point 0 accepted too (2.2 std) ...
    # ... but, as in the reference implementation, the smallest point is dropped anyway
    np.testing.assert_array_equal(detect_power_phase(sizes, losses), [1, 2, 3, 4])
    slope, icpt, _ = fit_power_phase(sizes, losses)
    assert (slope, icpt) == pytest.approx(line_fit(x[1:], y[1:]), abs=1e-12)


def test_hand_worked_spread_is_the_population_std():
    # point 2 is 5.9 population stds off the line through 3..5: rejected. With the sample std
    # (ddof = 1, sqrt(3/2) larger for 3 points) it would be 4.8 stds and accepted.
    sizes, losses = curve(
        [200, 400, 800, 1600, 3200, 6400], [0.3, 0.08, 0.025, -0.004, 0.006, -0.003]
    )
    x, y = np.log(sizes), np.log(losses)
    accept, ratio = rule(x, y, slice(3, 6), 2)
    assert not accept and ratio == pytest.approx(5.88, abs=0.01)
    assert ratio * np.sqrt(2 / 3) < 5.0
    np.testing.assert_array_equal(detect_power_phase(sizes, losses), [3, 4, 5])


@pytest.mark.parametrize("m", [1, 2, 3])
def test_k_or_fewer_points_are_all_used(m):
    # wildly non-linear points: with k = 3 or fewer points nothing is tested, all are used
    sizes, losses = curve([200, 400, 800][:m], [0.5, -0.4, 0.9][:m])
    np.testing.assert_array_equal(detect_power_phase(sizes, losses, k=3), np.arange(m))
    slope, icpt, idx = fit_power_phase(sizes, losses, k=3)
    x, y = np.log(sizes), np.log(losses)
    if m == 1:  # one point: a flat line through it
        assert (slope, icpt) == (0.0, pytest.approx(y[0]))
        assert extrapolate_power_phase(sizes, losses, TARGET) == pytest.approx(losses[0])
    else:
        assert (slope, icpt) == pytest.approx(line_fit(x, y), abs=1e-12)


def test_larger_k_uses_all_of_a_short_curve():
    sizes, losses = curve([200, 400, 800, 1600], [0.3, 0.08, 0.006, -0.004])
    np.testing.assert_array_equal(detect_power_phase(sizes, losses, k=4), [0, 1, 2, 3])
    np.testing.assert_array_equal(detect_power_phase(sizes, losses, k=3), [1, 2, 3])


def test_delta_controls_rejection():
    sizes, losses = curve(
        [200, 400, 800, 1600, 3200, 6400], [0.3, 0.08, 0.006, -0.004, 0.006, -0.003]
    )
    # delta = 1: point 2 (1.64 std) is rejected at once, only the k largest remain
    np.testing.assert_array_equal(detect_power_phase(sizes, losses, delta=1.0), [3, 4, 5])
    # delta = 20: point 1 (17 std) is accepted; whether point 0 is then accepted or rejected,
    # the result is 1 .. 5
    np.testing.assert_array_equal(detect_power_phase(sizes, losses, delta=20.0), [1, 2, 3, 4, 5])
    # delta huge: nothing rejected, the smallest still dropped
    np.testing.assert_array_equal(detect_power_phase(sizes, losses, delta=1e9), [1, 2, 3, 4, 5])


def ats_reference(x: np.ndarray, y: np.ndarray, k: int, delta: float) -> np.ndarray:
    """The rule of docs/replay.md, written out step by step."""
    m = len(x)
    if m <= k:
        return np.arange(m)
    n = k
    while n < m:
        accept, _ = rule(x, y, slice(m - n, m), m - n - 1, delta)
        if not accept:
            return np.arange(m - n, m)
        n += 1
    return np.arange(1, m)  # nothing rejected: the smallest point is dropped


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("k", "delta"), [(3, 5.0), (4, 2.0), (2, 3.0)])
def test_matches_the_rule_on_random_rectified_curves(seed, k, delta):
    rng = np.random.default_rng(seed)
    sizes = 200.0 * 2.0 ** np.arange(rng.integers(3, 12))
    d_l, beta = rng.uniform(3, 300), rng.uniform(0.2, 0.8)
    losses = 50 / (d_l + sizes**beta) + 1.0
    losses *= np.exp(0.003 * rng.standard_normal(len(sizes)))
    want = ats_reference(np.log(sizes), np.log(losses), k, delta)
    np.testing.assert_array_equal(detect_power_phase(sizes, losses, k=k, delta=delta), want)


def test_power_law_is_extrapolated_exactly():
    # a pure power law is one line in log-log: AtS recovers it wherever it stops
    sizes = 200.0 * 2.0 ** np.arange(8)
    losses = 7.0 * sizes**-0.25 * np.exp(1e-4 * np.cos(np.arange(8)))
    assert extrapolate_power_phase(sizes, losses, TARGET) == pytest.approx(
        7.0 * TARGET**-0.25, rel=1e-3
    )


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sizes", "losses", "kwargs", "match"),
    [
        ([200, 400, 800, 1600], [3, 2, 1.5, 1.2], {"k": 1}, "k must be >= 2"),
        ([200, 800, 400, 1600], [3, 2, 1.5, 1.2], {}, "strictly increasing"),
        ([200, 400, 400, 1600], [3, 2, 1.5, 1.2], {}, "strictly increasing"),
        ([0, 400, 800, 1600], [3, 2, 1.5, 1.2], {}, "positive sizes"),
        ([200, 400, 800, 1600], [3, 0, 1.5, 1.2], {}, "positive, finite losses"),
        ([200, 400, 800, 1600], [3, np.nan, 1.5, 1.2], {}, "positive, finite losses"),
        ([200, 400, 800], [3, 2, 1.5, 1.2], {}, "same length"),
        ([[200, 400]], [[3, 2]], {}, "1-D"),
        ([], [], {}, "at least one point"),
    ],
    ids=[
        "k-too-small",
        "unsorted",
        "duplicate-size",
        "zero-size",
        "zero-loss",
        "nan-loss",
        "length-mismatch",
        "2-d",
        "empty",
    ],
)
def test_bad_input_raises(sizes, losses, kwargs, match):
    with pytest.raises(ValueError, match=match):
        detect_power_phase(np.array(sizes, dtype=float), np.array(losses, dtype=float), **kwargs)
    with pytest.raises(ValueError, match=match):
        fit_power_phase(np.array(sizes, dtype=float), np.array(losses, dtype=float), **kwargs)
