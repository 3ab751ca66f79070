"""Selectors (lens_model/selectors.py): every registered selector on a small synthetic table,
the replay protocol's reading rules and costs, and the adaptive Lens selector."""

from __future__ import annotations

import numpy as np
import pytest

from lens_model import SELECTORS, Selection, Selector, TableProbes, fit_power_phase
from lens_model.metrics import probe_cost, relative_accuracy
from lens_model.selectors import Scored
from tests.conftest import TARGET_SIZE

BUDGETS = [3_200, 12_800, 51_200, 204_800]
FIXED_LADDER = {"ZeroShot", "SubTuning", "ModelSize", "VanillaFit", "RectifiedFit", "AtS"}
MIXED_SIZES = np.array([1e8] * 4 + [7e9] * 4)  # cheap and expensive candidates: Lens drops some


def arrays(table, model_sizes=None):
    sizes = np.array(table.sizes, dtype=float)
    losses = np.array(table.losses, dtype=float)
    w = np.array(table.model_sizes if model_sizes is None else model_sizes, dtype=float)
    return sizes, losses, w


def source(table, model_sizes=None) -> TableProbes:
    """A probe source that refuses the target column, as in the replay protocol."""
    sizes, losses, w = arrays(table, model_sizes)
    return TableProbes(sizes, losses, w, max_size=TARGET_SIZE - 1)


def make(name: str, n: int = 8, **kwargs) -> Selector:
    """A registered selector; NLPMetrics gets a weight metric per candidate (its only input)."""
    if name == "NLPMetrics":
        kwargs.setdefault("values", np.linspace(3.0, 2.0, n))
    return SELECTORS.get(name)(**kwargs)


def run(name: str, table, budget: int, model_sizes=None, **kwargs) -> Selection:
    src = source(table, model_sizes)
    selector = make(name, len(table.models), **kwargs)
    return selector.select(src, budget=budget, target_size=TARGET_SIZE)


def ats_cost(table, budget: int, model_sizes=None) -> float:
    return run("AtS", table, budget, model_sizes).cost(arrays(table, model_sizes)[2], TARGET_SIZE)


# -- every registered selector ---------------------------------------------------------------
def test_registry_holds_the_published_methods_and_lens():
    assert FIXED_LADDER | {"Lens"} <= set(SELECTORS.names())


@pytest.mark.parametrize("name", SELECTORS.names())
@pytest.mark.parametrize("budget", [3_200, 51_200])
def test_every_selector_returns_a_valid_selection(name, budget, synthetic_table):
    n = len(synthetic_table.models)
    w = arrays(synthetic_table)[2]
    sel = run(name, synthetic_table, budget)
    assert isinstance(sel, Selection)
    assert sel.scores.shape == sel.predictions.shape == sel.lower.shape == sel.upper.shape == (n,)
    assert np.all(np.isfinite(sel.scores))
    assert 0 <= sel.selected < n and sel.selected not in sel.dropped
    # the selected model is the best-scored one that was not dropped
    key = -sel.scores if sel.greater_is_better else sel.scores
    kept = [i for i in range(n) if i not in sel.dropped]
    assert key[sel.selected] == key[kept].min()
    assert sel.ranking().shape == (n,) and sorted(sel.ranking()) == list(range(n))
    cost = sel.cost(w, TARGET_SIZE)
    assert 0.0 <= cost <= 1.0
    assert cost <= ats_cost(synthetic_table, budget) + 1e-12  # nobody outspends AtS
    assert all(0 <= m < n and 0 <= d < TARGET_SIZE for m, d in sel.probes)
    has_interval = np.isfinite(sel.lower) & np.isfinite(sel.upper)
    p = sel.predictions
    assert np.all(sel.lower[has_interval] <= p[has_interval])
    assert np.all(p[has_interval] <= sel.upper[has_interval])
    if name in FIXED_LADDER:
        assert all(d <= budget for _, d in sel.probes)


@pytest.mark.parametrize("name", SELECTORS.names())
def test_no_selector_reads_the_target_column(name, synthetic_table):
    """A source capped below the target raises on any read of it; selections still complete."""
    src = source(synthetic_table)
    with pytest.raises(ValueError, match="above the largest readable size"):
        src.loss(0, TARGET_SIZE)
    sel = make(name).select(src, budget=204_800, target_size=TARGET_SIZE)
    assert max((d for _, d in sel.probes), default=0) < TARGET_SIZE
    # a table whose target column is garbage gives the same selection: it was never used
    sizes, losses, w = arrays(synthetic_table)
    poisoned = losses.copy()
    poisoned[:, sizes == TARGET_SIZE] = np.nan
    again = make(name).select(
        TableProbes(sizes, poisoned, w, max_size=TARGET_SIZE),
        budget=204_800,
        target_size=TARGET_SIZE,
    )
    assert again.selected == sel.selected
    np.testing.assert_array_equal(again.scores, sel.scores)
    # nor did the calibrated intervals and probabilities use it
    np.testing.assert_array_equal(again.lower, sel.lower)
    np.testing.assert_array_equal(again.upper, sel.upper)
    np.testing.assert_array_equal(again.p_best, sel.p_best)
    assert again.interval_basis == sel.interval_basis


@pytest.mark.parametrize("name", SELECTORS.names())
def test_budget_above_target_is_refused(name, synthetic_table):
    with pytest.raises(ValueError, match="must not exceed target_size"):
        run(name, synthetic_table, 2 * TARGET_SIZE)


def test_registry_did_you_mean():
    with pytest.raises(KeyError, match="Did you mean"):
        SELECTORS.get("Lense")
    with pytest.raises(KeyError, match="Did you mean 'RectifiedFit'"):
        SELECTORS.get("RectifiedFitt")
    assert SELECTORS.get("ats") is SELECTORS.get("AtS")  # case-insensitive


# -- what each baseline reads and scores (docs/replay.md) -------------------------------
def test_baseline_scores_by_hand(synthetic_table):
    sizes, losses, w = arrays(synthetic_table)
    col = {int(s): losses[:, j] for j, s in enumerate(sizes)}
    n = len(w)
    zero = run("ZeroShot", synthetic_table, 12_800)
    np.testing.assert_array_equal(zero.scores, col[0])
    assert zero.probes == {(m, 0) for m in range(n)}
    assert zero.cost(w, TARGET_SIZE) == 0.0

    sub = run("SubTuning", synthetic_table, 12_800)
    np.testing.assert_array_equal(sub.scores, col[12_800])
    assert sub.probes == {(m, 12_800) for m in range(n)}
    assert sub.cost(w, TARGET_SIZE) == pytest.approx(12_800 / TARGET_SIZE)
    assert sub.selected == int(np.argmin(col[12_800]))

    size = run("ModelSize", synthetic_table, 12_800)
    np.testing.assert_allclose(size.scores, np.log(w))
    assert size.greater_is_better and size.selected == int(np.argmax(w)) and not size.probes

    ats = run("AtS", synthetic_table, 12_800)
    ladder = sizes[(sizes > 0) & (sizes <= 12_800)]
    assert ats.probes == {(m, int(d)) for m in range(n) for d in ladder}
    assert ats.cost(w, TARGET_SIZE) == pytest.approx(ladder.sum() / TARGET_SIZE)  # ~ 2B / P
    for m in range(n):
        slope, icpt, _ = fit_power_phase(ladder, col_row(losses, sizes, m, ladder))
        assert ats.scores[m] == pytest.approx(np.exp(icpt + slope * np.log(TARGET_SIZE)))

    rect = run("RectifiedFit", synthetic_table, 12_800)
    assert (0, 0) in rect.probes and rect.cost(w, TARGET_SIZE) == ats.cost(w, TARGET_SIZE)
    vanilla = run("VanillaFit", synthetic_table, 12_800)
    assert all(d > 0 for _, d in vanilla.probes)


def col_row(losses, sizes, m, ladder):
    return np.array([losses[m, int(np.flatnonzero(sizes == d)[0])] for d in ladder])


def test_rectified_fit_predicts_the_target_on_rectified_curves(synthetic_table):
    sizes, losses, _ = arrays(synthetic_table)
    truth = losses[:, -1]
    sel = run("RectifiedFit", synthetic_table, 204_800)
    assert np.abs(sel.predictions / truth - 1).max() < 0.05
    assert relative_accuracy(sel.selected, truth) == 1.0


def test_ties_go_to_the_first_model(synthetic_table):
    sizes, losses, w = arrays(synthetic_table)
    losses = losses.copy()
    losses[[2, 5], 0] = losses[:, 0].min() - 0.1  # models 2 and 5 tie for the best zero-shot
    src = TableProbes(sizes, losses, w, max_size=TARGET_SIZE - 1)
    assert (
        SELECTORS.get("ZeroShot")().select(src, budget=200, target_size=TARGET_SIZE).selected == 2
    )


def test_dropped_candidates_are_never_selected():
    """The base class excludes dropped candidates even when their score is the best."""

    class DropsTheBest(Selector):
        def _score(self, source, budget, target_size):
            scores = np.array([3.0, 1.0, 2.0])
            nan = np.full(3, np.nan)
            return Scored(scores, scores, nan, nan, {1: "dropped after size 200"})

    src = TableProbes([0, 200, 400], np.ones((3, 3)), [1, 1, 1], max_size=400)
    sel = DropsTheBest().select(src, budget=400, target_size=400)
    assert sel.selected == 2 and sel.ranking()[0] == 1


# -- Lens ------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("cost_fraction", [1.0, 0.7])
def test_lens_spends_no_more_than_ats_and_never_picks_a_dropped_model(
    budget, cost_fraction, synthetic_table
):
    w = MIXED_SIZES
    lens = run("Lens", synthetic_table, budget, w, cost_fraction=cost_fraction)
    ats = ats_cost(synthetic_table, budget, w)
    assert lens.cost(w, TARGET_SIZE) <= cost_fraction * ats * (1 + 1e-12)
    assert lens.dropped, "this table should make Lens stop probing some candidates"
    assert lens.selected not in lens.dropped
    for model, reason in lens.dropped.items():
        assert isinstance(reason, str) and reason.startswith("dropped after size")
        # a dropped model saw no more data than the selected one
        assert max(d for m, d in lens.probes if m == model) <= max(
            d for m, d in lens.probes if m == lens.selected
        )
    assert np.all(np.isfinite(lens.predictions))


def test_lens_rounds_by_hand(synthetic_table):
    """Equal model sizes, budget 12800, spacing 4: round 0 probes 200, 800, 3200, 12800 for all
    (17000 of AtS's 25400 per model); round 1 can afford 51200 for one survivor only."""
    sizes, losses, _ = arrays(synthetic_table)
    n = len(losses)
    w = np.ones(n)
    first = np.array([200, 800, 3200, 12_800], dtype=float)
    predicted = []
    for m in range(n):
        # Lens extrapolates the local slope between the two largest probes (12800 and 3200).
        ys = col_row(losses, sizes, m, first)
        slope = np.log(ys[-1] / ys[-2]) / np.log(4.0)
        predicted.append(ys[-1] * (TARGET_SIZE / 12_800) ** slope)
    best = int(np.argmin(predicted))
    lens = run("Lens", synthetic_table, 12_800, w)
    expected = {(m, int(d)) for m in range(n) for d in first} | {(best, 51_200)}
    assert lens.probes == expected
    assert lens.cost(w, TARGET_SIZE) == pytest.approx((n * 17_000 + 51_200) / (n * TARGET_SIZE))
    assert lens.selected == best
    assert set(lens.dropped) == set(range(n)) - {best}
    for m in lens.dropped:
        assert lens.scores[m] == pytest.approx(predicted[m])
        assert "dropped after size 12800" in lens.dropped[m]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cost_fraction": 0.0}, "cost_fraction must be in"),
        ({"cost_fraction": 1.5}, "cost_fraction must be in"),
        ({"spacing": 3}, "spacing must be a power of two"),
        ({"spacing": 1}, "spacing must be a power of two"),
        ({"keep": 1.0}, "keep must be in"),
    ],
)
def test_lens_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SELECTORS.get("Lens")(**kwargs)


def test_lens_refuses_a_first_round_above_the_cap(synthetic_table):
    with pytest.raises(ValueError, match="costs more than the cap"):
        run("Lens", synthetic_table, 12_800, cost_fraction=0.5)


def test_lens_refuses_a_budget_off_the_ladder(synthetic_table):
    with pytest.raises(ValueError, match="not on the ladder"):
        run("Lens", synthetic_table, 12_000)


def test_table_probes_records_reads_and_rejects_unknown_sizes(synthetic_table):
    src = source(synthetic_table)
    assert src.probes == set()
    src.loss(3, 400)
    src.loss(3, 400)
    assert src.probes == {(3, 400)}
    assert probe_cost(src.probes, src.model_sizes, TARGET_SIZE) > 0
    with pytest.raises(KeyError, match="not in the ladder"):
        src.loss(0, 300)
    assert TARGET_SIZE not in src.sizes


def test_table_probes_block_read_is_the_single_reads(synthetic_table):
    """``read`` (what selectors use on a table) returns and records exactly what ``loss``
    does, and refuses the target column and sizes off the ladder alike."""
    one, block = source(synthetic_table), source(synthetic_table)
    models, sizes = [0, 3, 5], [200, 3_200, 204_800]
    want = np.array([[one.loss(m, d) for d in sizes] for m in models])
    np.testing.assert_array_equal(block.read(models, sizes), want)
    assert block.probes == one.probes
    with pytest.raises(ValueError, match="above the largest readable size"):
        block.read([0], [TARGET_SIZE])
    with pytest.raises(KeyError, match="not in the ladder"):
        block.read([0], [300])


def test_lens_on_a_two_size_ladder_reads_both_sizes():
    """Spacing 4 from the budget would leave one first-round size on a 32-64 ladder: the
    secant takes the size below instead of failing."""
    sizes = np.array([0, 32, 64, 1024], dtype=float)
    losses = np.array([[3.0, 2.5, 2.3, 2.0], [3.2, 2.6, 2.4, 2.1], [2.9, 2.8, 2.7, 2.6]])
    source = TableProbes(sizes, losses, np.array([1e8, 2e8, 3e8]), max_size=64)
    sel = SELECTORS.get("Lens")().select(source, budget=64, target_size=1024)
    assert {d for _, d in sel.probes} >= {32, 64} and np.isfinite(sel.predictions).all()
    assert sel.selected == 0 and sel.interval_method == "none"  # no backtest on two sizes


@pytest.mark.parametrize("name", ["Lens", "AtS", "VanillaFit", "RectifiedFit"])
def test_one_probe_size_is_too_few_to_extrapolate(name):
    sizes = np.array([0, 64, 1024], dtype=float)
    losses = np.array([[3.0, 2.3, 2.0], [3.2, 2.4, 2.1]])
    source = TableProbes(sizes, losses, np.array([1e8, 2e8]), max_size=64)
    with pytest.raises(ValueError, match=rf"{name} needs at least 2 probe sizes .* got \[64\]"):
        SELECTORS.get(name)().select(source, budget=64, target_size=1024)
    assert SELECTORS.get("SubTuning")().select(source, budget=64, target_size=1024).selected == 0


# -- stateless selectors ---------------------------------------------------------------------
def _same(a: Selection, b: Selection) -> None:
    for key in ("scores", "predictions", "lower", "upper", "p_best"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert (a.selected, a.probes, a.dropped) == (b.selected, b.probes, b.dropped)
    assert (a.predictor, a.interval_method, a.interval_basis) == (
        b.predictor,
        b.interval_method,
        b.interval_basis,
    )


class _Interrupting(TableProbes):
    """A table whose first read of size ``at`` runs ``interrupt()`` first: a second selection
    that starts and ends in the middle of this one."""

    def __init__(self, *args, at: float, interrupt, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.at, self.interrupt, self.inner = at, interrupt, None

    def loss(self, model: int, size: int) -> float:
        if size == self.at and self.inner is None:
            self.inner = self.interrupt()
        return super().loss(model, size)


def test_one_lens_serves_two_interleaved_selections(synthetic_table, synthetic_params):
    """Lens on a table with F (the law predicts) is interrupted after its first round (at its
    zero-shot reads) by the same instance selecting on another table without F (the local
    slope predicts): each selection equals the one a fresh Lens makes alone."""
    from tests.conftest import rectified_table

    t, other = synthetic_table, rectified_table(synthetic_table.sizes, n=6, seed=11)
    budget, f = 25_600, np.asarray(synthetic_params["d_l"]) * 3.0

    def with_f(**kwargs) -> TableProbes:
        cls = _Interrupting if kwargs else TableProbes
        return cls(t.sizes, t.losses, t.model_sizes, max_size=TARGET_SIZE - 1, f_terms=f, **kwargs)

    def without_f() -> TableProbes:
        return TableProbes(other.sizes, other.losses, other.model_sizes, max_size=TARGET_SIZE - 1)

    lens = SELECTORS.get("Lens")()
    source = with_f(
        at=0,
        interrupt=lambda: lens.select(without_f(), budget=budget, target_size=TARGET_SIZE),
    )
    outer = lens.select(source, budget=budget, target_size=TARGET_SIZE)
    assert source.inner is not None  # the second selection did run in the middle
    assert (outer.predictor, source.inner.predictor) == ("lens_law", "local_slope")
    fresh = SELECTORS.get("Lens")()
    _same(outer, fresh.select(with_f(), budget=budget, target_size=TARGET_SIZE))
    _same(source.inner, SELECTORS.get("Lens")().select(without_f(), budget=budget,
                                                        target_size=TARGET_SIZE))  # fmt: skip


@pytest.mark.parametrize("name", SELECTORS.names())
def test_select_leaves_the_selector_as_configured(name, synthetic_table):
    selector = make(name, level=0.8)
    before = selector.get_params()
    run_twice = [selector.select(source(synthetic_table), budget=b, target_size=TARGET_SIZE)
                 for b in (3_200, 51_200)]  # fmt: skip
    assert selector.get_params() == before and set(vars(selector)) == set(before)
    assert all(sel.level == 0.8 for sel in run_twice)


@pytest.mark.parametrize("name", SELECTORS.names())
def test_replace_copies_the_settings_and_validates_the_changes(name):
    selector = make(name, level=0.8)
    copy = selector.replace(interval="heuristic")
    assert type(copy) is type(selector) and copy is not selector
    assert copy.get_params() == selector.get_params() | {"interval": "heuristic"}
    assert selector.interval == "calibrated"
    with pytest.raises(ValueError, match="level must be in"):
        selector.replace(level=1.5)


def test_law_selector_copies_share_their_fits(synthetic_table):
    """A copy with other interval settings reuses the fits (``FitMemo``): a replay of many
    levels fits each set of curves once."""
    fit = SELECTORS.get("RectifiedFit")()
    law = fit.law_at(synthetic_table.sizes, synthetic_table.losses, 3_200)
    copy = fit.replace(level=0.5, interval="heuristic")
    assert copy.law_at(synthetic_table.sizes, synthetic_table.losses, 3_200) is law
    sel = copy.select(source(synthetic_table), budget=3_200, target_size=TARGET_SIZE)
    np.testing.assert_array_equal(sel.converged, law.converged_)


# -- SuccessiveHalving -----------------------------------------------------------------------
def _halving_table(final: np.ndarray, model_sizes=None):
    """Curves whose order is ``final`` at every size (loss = final + 1 / sqrt(D)), 8 models."""
    sizes = np.array([0] + [200 * 2**i for i in range(14)], dtype=float)
    losses = final[:, None] + 1.0 / np.sqrt(np.maximum(sizes, 1.0))[None, :]
    w = np.full(len(final), 1e8) if model_sizes is None else model_sizes
    return TableProbes(sizes, losses, w, max_size=TARGET_SIZE - 1), sizes, losses


def test_successive_halving_order_by_hand():
    """8 equal models at cap 0.5 x AtS, budget 3200 (AtS: 200+...+3200 = 6200 per model,
    cap 3100): rungs 800 x 8, 1600 x 4, 3200 x 2 cost 3 x 6400 = 19200 / 8 = 2400 per model
    <= 3100, while a first rung at 1600 would cost 4800. Each rung keeps the best half."""
    final = np.array([2.0, 1.5, 1.9, 1.2, 1.7, 1.1, 1.8, 1.3])
    src, _, _ = _halving_table(final)
    sh = SELECTORS.get("SuccessiveHalving")(cost_fraction=0.5)
    rungs, cap = sh.schedule(src, 3_200, TARGET_SIZE)
    assert rungs == [(800, 8), (1600, 4), (3200, 2)] and cap == 0.5 * 6200 * 8e8
    sel = sh.select(src, budget=3_200, target_size=TARGET_SIZE)
    by_size = {d: sorted(m for m, e in sel.probes if e == d) for d in (800, 1600, 3200)}
    assert by_size == {800: list(range(8)), 1600: [1, 3, 5, 7], 3200: [3, 5]}
    assert sel.selected == 5 and set(sel.dropped) == {0, 1, 2, 4, 6, 7}
    assert "not promoted after 1600 examples" in sel.dropped[1]
    np.testing.assert_allclose(sel.scores[[0, 1, 5]], final[[0, 1, 5]] + [800**-0.5, 1600**-0.5,
                                                                         3200**-0.5])  # fmt: skip
    assert sel.interval_method == "none" and "predicts no target loss" in sel.interval_basis
    assert np.isnan(sel.predictions).all() and list(sel.ranking()[:1]) == [5]


def test_successive_halving_reduction_factor_4():
    final = np.arange(8, dtype=float)[::-1] + 1.0  # model 7 is best
    src, _, _ = _halving_table(final)
    sel = SELECTORS.get("SuccessiveHalving")(reduction_factor=4).select(
        src, budget=12_800, target_size=TARGET_SIZE
    )
    sizes = sorted({d for _, d in sel.probes})
    assert len(sizes) == 2 and sizes[1] == 4 * sizes[0]  # 8 -> 2 candidates: data x 4
    assert sorted(m for m, d in sel.probes if d == sizes[1]) == [6, 7] and sel.selected == 7


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("budget", BUDGETS)
def test_successive_halving_cap_is_lens_cap_and_never_exceeded(fraction, budget, synthetic_table):
    """Its cap is Lens@f's (f x AtS's cost at the budget), and it never spends more, even when
    the promoted candidates are the expensive ones."""
    from lens_model.selectors import ats_cap

    for w in (None, MIXED_SIZES, MIXED_SIZES[::-1]):
        src = source(synthetic_table, w)
        weights = arrays(synthetic_table, w)[2]
        sh = SELECTORS.get("SuccessiveHalving")(cost_fraction=fraction)
        _, cap = sh.schedule(src, budget, TARGET_SIZE)
        ats = ats_cost(synthetic_table, budget, w)
        assert cap / (weights.sum() * TARGET_SIZE) == pytest.approx(fraction * ats)
        ladder = synthetic_table.sizes[(synthetic_table.sizes > 0)]
        assert cap == ats_cap(ladder[ladder < TARGET_SIZE], budget, weights, fraction)
        sel = sh.select(src, budget=budget, target_size=TARGET_SIZE)
        assert sel.cost(weights, TARGET_SIZE) <= fraction * ats + 1e-12
        assert sel.cost(weights, TARGET_SIZE) > 0.5 * fraction * ats  # it uses its cap


def test_successive_halving_trims_expensive_promotions_to_the_cap():
    """The best models are 70x larger than planned for: the worst promoted ones are left out
    so that the rung fits the cap."""
    final = np.array([1.0, 1.1, 1.2, 1.3, 2.0, 2.1, 2.2, 2.3])
    expensive_first = MIXED_SIZES[::-1]
    src, _, _ = _halving_table(final, expensive_first)
    sh = SELECTORS.get("SuccessiveHalving")(cost_fraction=0.5)
    sel = sh.select(src, budget=3_200, target_size=TARGET_SIZE)
    _, cap = sh.schedule(src, 3_200, TARGET_SIZE)
    spent = sum(expensive_first[m] * d for m, d in sel.probes)
    assert spent <= cap and sel.selected == 0
    # planned: 2 candidates at 3200; the two best (7e9 parameters each) do not fit the cap
    assert sh.schedule(src, 3_200, TARGET_SIZE)[0][-1] == (3200, 2)
    assert [m for m, d in sel.probes if d == 3200] == [] and set(sel.dropped) == {4, 5, 6, 7}


def test_successive_halving_ties_go_to_the_lower_index():
    final = np.array([1.5, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0])  # 4-way tie for best
    src, _, _ = _halving_table(final)
    sel = SELECTORS.get("SuccessiveHalving")(cost_fraction=0.5).select(
        src, budget=3_200, target_size=TARGET_SIZE
    )
    assert sorted(m for m, d in sel.probes if d == 1600) == [1, 2, 3, 4]
    assert sorted(m for m, d in sel.probes if d == 3200) == [1, 2]
    assert sel.selected == 1


def test_successive_halving_bad_settings_and_tiny_cap(synthetic_table):
    with pytest.raises(ValueError, match="reduction_factor must be an integer >= 2"):
        SELECTORS.get("SuccessiveHalving")(reduction_factor=1.5)
    with pytest.raises(ValueError, match="cost_fraction must be in"):
        SELECTORS.get("SuccessiveHalving")(cost_fraction=0)
    sh = SELECTORS.get("SuccessiveHalving")(cost_fraction=0.01)
    with pytest.raises(ValueError, match="no successive-halving schedule fits"):
        sh.select(source(synthetic_table), budget=200 * 2, target_size=TARGET_SIZE)


# -- NLPMetrics ------------------------------------------------------------------------------
def test_nlp_metrics_ranks_by_the_lowest_metric_with_no_probe(synthetic_table):
    values = [2.5, 1.0, 3.0, 1.0, 2.0, 4.0, 5.0, 6.0]
    src = source(synthetic_table)
    sel = make("NLPMetrics", values=values).select(src, budget=3_200, target_size=TARGET_SIZE)
    assert sel.selected == 1  # tie with model 3: the first one
    assert sel.probes == set() and sel.cost(arrays(synthetic_table)[2], TARGET_SIZE) == 0.0
    np.testing.assert_array_equal(sel.scores, values)
    assert sel.interval_method == "none"


def test_nlp_metrics_without_weights_says_so(synthetic_table):
    from lens_model.selectors import NeedsWeightsError

    with pytest.raises(NeedsWeightsError, match="needs the candidates' weights"):
        SELECTORS.get("NLPMetrics")().select(
            source(synthetic_table), budget=3_200, target_size=TARGET_SIZE
        )
    with pytest.raises(ValueError, match="one finite alpha per candidate"):
        make("NLPMetrics", metric="alpha", values=[1.0, 2.0]).select(
            source(synthetic_table), budget=3_200, target_size=TARGET_SIZE
        )
    with pytest.raises(ValueError, match="metric must be one of"):
        SELECTORS.get("NLPMetrics")(metric="stable_rank")
