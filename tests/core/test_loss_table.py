"""The loss-table record (lens_model/loss_table.py) and the one scorer of a selector on a
table (lens_model/table_score.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lens_model import SELECTORS, LossTable, score
from lens_model.metrics import pearson_correlation, probe_cost, relative_accuracy
from tests.conftest import TARGET_SIZE, make_selector

GOOD = {
    "name": "T",
    "models": ["a", "b"],
    "sizes": [0, 200, 400],
    "losses": [[3.0, 2.0, 1.5], [3.2, 2.1, 1.4]],
    "model_sizes": [1e8, 2e8],
}


def test_a_table_is_a_read_only_copy():
    losses = np.array(GOOD["losses"])
    table = LossTable(**(GOOD | {"losses": losses}))
    losses[0, 0] = 99.0
    assert table.losses[0, 0] == 3.0 and table.families == ("", "")
    with pytest.raises(ValueError, match="read-only"):
        table.losses[0, 0] = 1.0
    assert table == LossTable(**GOOD) and table != LossTable(**(GOOD | {"name": "U"}))
    np.testing.assert_array_equal(table.losses_at(400), [1.5, 1.4])
    with pytest.raises(ValueError, match="no column for the target size 800"):
        table.losses_at(800)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"models": ["a"], "losses": [[3.0, 2.0, 1.5]], "model_sizes": [1]}, "at least 2 models"),
        ({"sizes": [0, 400, 200]}, "strictly increasing"),
        ({"losses": [[3.0, 2.0], [3.2, 2.1]]}, r"shape \(2, 2\), expected .* \(2, 3\)"),
        ({"losses": [[3.0, np.nan, 1.5], [3.2, 2.1, 1.4]]}, "finite and positive"),
        ({"model_sizes": [1e8, 0]}, "one positive parameter count per model"),
        ({"families": ["x"]}, "1 families for 2 models"),
    ],
)
def test_a_broken_table_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        LossTable(**(GOOD | change))


@pytest.mark.parametrize("name", SELECTORS.names())
def test_score_is_the_protocol_metrics_of_the_selection(name, synthetic_table):
    selector = make_selector(name, len(synthetic_table.models))
    scored = score(selector, synthetic_table, budget=3_200, target_size=TARGET_SIZE)
    sel, truth = scored.selection, synthetic_table.losses_at(TARGET_SIZE)
    assert all(d < TARGET_SIZE for _, d in sel.probes)  # the target column is never read
    assert scored.pear_corr == pearson_correlation(sel.scores, truth)
    assert scored.rel_acc == relative_accuracy(sel.selected, truth)
    assert scored.cost == probe_cost(sel.probes, synthetic_table.model_sizes, TARGET_SIZE)
    held, stated = scored.intervals_held()
    assert stated == (8 if scored.predicts and sel.interval_method != "none" else 0)
    inside = (sel.lower <= truth) & (truth <= sel.upper)
    assert held == int(inside.sum())
    if stated:
        assert scored.interval_scores(sel.level)["coverage"] == held / stated


def test_score_refuses_a_table_without_the_target(synthetic_table):
    with pytest.raises(ValueError, match="no column for the target size 1000"):
        score(SELECTORS.get("AtS")(), synthetic_table, budget=400, target_size=1000)
