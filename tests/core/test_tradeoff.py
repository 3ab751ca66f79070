"""Cost-accuracy trade-off (lens_model/tradeoff.py) and its benchmark outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lens_model.loss_table import LossTable
from lens_model.tradeoff import cost_accuracy_curve, first_round, lens_settings

FLAN = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "flan.csv"
TARGET = 1_638_400
BUDGETS = [TARGET // r for r in (8, 16, 32, 64, 128, 256, 512)]
needs_flan = pytest.mark.skipif(not FLAN.is_file(), reason=f"FLAN loss table not found at {FLAN}")


def _curve(table: LossTable, fractions) -> pd.DataFrame:
    rows = cost_accuracy_curve(table, budgets=BUDGETS, target_size=TARGET, fractions=fractions)
    return pd.DataFrame(rows)


def test_lens_never_exceeds_its_fraction_of_ats(synthetic_table):
    fractions = (0.1, 0.25, 0.35, 0.5, 0.75, 1.0)
    frame = _curve(synthetic_table, fractions)
    ats = frame[frame.method == "AtS"].set_index("budget").cost
    lens = frame[(frame.method == "Lens") & (frame.skipped == "")]
    assert len(lens) > 0
    limit = lens.cost_fraction_setting * lens.budget.map(ats) + 1e-9
    assert (lens.cost <= limit).all(), lens[lens.cost > limit]
    # AtS's cost follows the protocol: sizes 200..B per model, (2B - 200) / target
    expected = (2 * ats.index.to_numpy() - 200) / TARGET
    assert np.allclose(ats.to_numpy(), expected, atol=1e-9)


def test_rows_for_every_method_setting_and_budget(synthetic_table):
    fractions = (0.25, 0.5, 1.0)
    frame = _curve(synthetic_table, fractions)
    for method in ("AtS", "SubTuning"):
        assert sorted(frame[frame.method == method].budget) == sorted(BUDGETS)
    lens = frame[frame.method == "Lens"]
    for fraction in fractions:
        assert sorted(lens[lens.cost_fraction_setting == fraction].budget) == sorted(BUDGETS)
    ran = frame[frame.skipped == ""]
    assert ran[["cost", "pear_corr", "rel_acc"]].notna().all().all()
    assert ran.rel_acc.between(0, 1).all() and ran.pear_corr.between(-1, 1).all()
    assert set(frame.columns) >= {
        "method",
        "cost_fraction_setting",
        "budget",
        "cost",
        "pear_corr",
        "rel_acc",
    }


def test_a_fraction_with_no_first_round_is_skipped_with_its_reason(synthetic_table):
    # At budget 3200 AtS reads 200+...+3200 = 6200 per model; the cheapest two-size first round
    # (200, 1600) costs 0.29 of that, so 0.1 cannot run there, while 0.5 always can.
    frame = _curve(synthetic_table, (0.1, 0.5))
    skipped = frame[frame.skipped != ""]
    assert set(skipped.cost_fraction_setting) == {0.1}
    assert 3200 in set(skipped.budget)
    assert skipped.cost.isna().all() and skipped.rel_acc.isna().all()
    assert skipped.skipped.str.contains("no first round fits").all()
    assert (frame[frame.cost_fraction_setting == 0.5].skipped == "").all()


def test_settings_rule_reads_only_the_ladder():
    ladder = np.array([200 * 2**i for i in range(13)], dtype=float)  # below the target
    assert lens_settings(ladder, 204_800, 1.0)[0] == {
        "cost_fraction": 1.0,
        "first_top": 1.0,
        "spacing": 4,
    }
    half, _ = lens_settings(ladder, 204_800, 0.5)
    assert half == {"cost_fraction": 0.5, "first_top": 0.5, "spacing": 8}
    first = first_round(ladder, 204_800, first_top=0.5, spacing=8)
    assert first == [200, 1600, 12_800, 102_400]
    settings, reason = lens_settings(ladder, 3200, 0.1)
    assert settings is None and "0.290 x AtS" in reason


@pytest.mark.parametrize("fractions", [(0.0,), (1.5,)])
def test_bad_fraction_is_rejected(synthetic_table, fractions):
    with pytest.raises(ValueError, match=r"cost fractions must be in \(0, 1\]"):
        _curve(synthetic_table, fractions)


@needs_flan
def test_flan_half_cost_lens_matches_ats_relacc_at_half_the_cost():
    from tasks.reporting.loss_tables import load_loss_table

    frame = _curve(load_loss_table(str(FLAN)), (0.5,))
    lens = frame[frame.method == "Lens"].set_index("budget").sort_index()
    ats = frame[frame.method == "AtS"].set_index("budget").sort_index()
    assert list(lens.index) == sorted(BUDGETS) and (lens.skipped == "").all()
    assert (lens.rel_acc >= ats.rel_acc - 1e-9).all(), (lens.rel_acc, ats.rel_acc)
    assert (lens.cost <= 0.5 * ats.cost + 1e-9).all(), lens.cost / ats.cost


@pytest.mark.slow
@pytest.mark.integration
@needs_flan
def test_flan_cli_writes_cost_accuracy_outputs(tmp_path):
    from flows.cli import main

    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["benchmark", "--table", str(FLAN), "--out", str(out), "--tracking-uri", uri]
    assert main([*args, "--methods", "AtS", "Lens"]) == 0
    ca = pd.read_csv(out / "cost_accuracy.csv", keep_default_na=False, na_values=[""])
    assert set(ca.dataset) == {"FLAN"}
    assert set(ca.method) == {"AtS", "SubTuning", "Lens", "SuccessiveHalving"}
    assert sorted(ca.ratio.unique()) == [8, 16, 32, 64, 128, 256, 512]
    png = (out / "flan_cost_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    report = (out / "report.md").read_text()
    assert "# Cost-accuracy" in report
    assert "Half-cost Lens and SuccessiveHalving vs AtS (FLAN)" in report
    assert "## FLAN" in report  # the original sections are still there

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("lensllm-replay").experiment_id])[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"cost_accuracy.csv", "flan_cost_accuracy.png"} <= artifacts
    history = client.get_metric_history(run.info.run_id, "Lens_f0.5_RelAcc")
    assert sorted(m.step for m in history) == [8, 16, 32, 64, 128, 256, 512]
    assert all(not math.isnan(m.value) for m in history)
