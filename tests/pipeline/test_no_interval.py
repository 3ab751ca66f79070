"""Where no interval can be calibrated (a ladder of two sizes leaves no backtest and no
cross-task prior is used, ``intervals.prior: none``), LensLLM states none, everywhere a user
looks: the selection, the check at the target, the MLflow
description, metrics and tags, the registered version, the CLI, the plots. Never the
predictor's own uncalibrated interval in its place (the zoo audits' held 5 of 24 at 90 %)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flows import cli
from flows.cli.selection_summary import print_ranking
from tasks.fit import fit_and_select
from tasks.promotion.policy import version_description, version_tags
from tasks.records.schema import Budget, IntervalSpec, TargetCheck
from tasks.reporting.plots import plot_live_calibration, plot_prediction, plot_selection
from tasks.tracking import tags as T
from tasks.tracking.selection import check_metrics, check_tags, selection_note
from tests.conftest import probe_result

SIZES = [0, 32, 64]  # a ladder of two sizes: a backtest needs a third
CURVES = {"a": [3.0, 2.4, 2.2], "b": [3.2, 2.6, 2.45], "c": [2.9, 2.7, 2.6]}


@pytest.fixture(scope="module", params=["AtS", "Lens"])
def result(request):
    """The selection of each selector on the two-size ladder, and its probes."""
    probes = {
        name: [probe_result(name, d, v) for d, v in zip(SIZES, curve, strict=True)]
        for name, curve in CURVES.items()
    }
    n_params = {name: 1_000 for name in CURVES}
    selection = fit_and_select(
        probes, n_params, target_size=1024, budget=64, selector=request.param,
        intervals=IntervalSpec(prior="none"),
    )  # fmt: skip
    return selection, probes


@pytest.mark.parametrize("selector", ["AtS", "Lens"])
def test_with_the_default_prior_the_same_ladder_gets_the_prior_s_interval(selector):
    """The shipped cross-task prior gives the two-size ladder an interval of its own: no
    backtest error updates it, the basis says so, and every interval holds its point."""
    probes = {
        name: [probe_result(name, d, v) for d, v in zip(SIZES, curve, strict=True)]
        for name, curve in CURVES.items()
    }
    n_params = {name: 1_000 for name in CURVES}
    result = fit_and_select(probes, n_params, target_size=1024, budget=64, selector=selector)
    assert result.interval_method == "calibrated"
    assert "error-model prior (error_prior.json" in result.interval_basis
    assert "updated with 0 backtest errors" in result.interval_basis
    for cand in result.candidates.values():
        lo, hi = cand.interval
        assert lo < cand.predicted_loss < hi and hi / lo < 10
    assert sum(c.p_best for c in result.candidates.values()) == pytest.approx(1.0)


def _check(result) -> TargetCheck:
    winner = result.winner
    return TargetCheck(
        candidate=result.selected, rank=1, target_size=1024, trained_examples=1024,
        rank_on=result.rank_on, measured_loss=2.0, predicted_loss=winner.predicted_loss,
        interval_low=winner.interval[0], interval_high=winner.interval[1], level=result.level,
    )  # fmt: skip


def test_the_selection_predicts_and_ranks_but_states_no_interval(result):
    result, _ = result
    assert result.interval_method == "none"
    assert result.interval_basis.startswith("no interval: too few probes to calibrate one")
    assert result.selected == "a"  # it still predicts and ranks
    for cand in result.candidates.values():
        assert math.isfinite(cand.predicted_loss)
        assert all(math.isnan(v) for v in cand.interval)
        assert cand.p_best is None or math.isnan(cand.p_best)
    assert result.prob_better == {"a": {}, "b": {}, "c": {}}


def test_the_check_at_the_target_neither_held_nor_missed(result):
    check = _check(result[0])
    assert check.held is None and check.verdict == "no interval was stated"
    assert "(no interval)" in check.summary() and "nan" not in check.summary()
    metrics = {k: v for k, v, _ in check_metrics(check)}
    assert math.isnan(metrics["target.interval_held"])  # neither 1 nor 0
    assert check_tags(check)[T.TARGET_INTERVAL_HELD] == "no interval"


def test_mlflow_description_and_registered_version_say_so(result):
    result, _ = result
    budget = Budget(
        compute_spent=1.0, compute_full_ladder=2.0, compute_full_finetune_all=10.0,
        flops_spent=1.0, n_probes=9,
    )  # fmt: skip
    note = selection_note(result, budget, [_check(result)], None, "model")
    assert "no interval: too few probes to calibrate one" in note
    assert "no interval was stated" in note and "nan" not in note
    tags = version_tags(
        task_key="t", selection_key="s", predicted_loss=result.winner.predicted_loss,
        interval=list(result.winner.interval), selector="AtS",
    )  # fmt: skip
    text = version_description(tags)
    assert "no interval: too few probes to calibrate one" in text and "nan" not in text


def test_cli_ranking_says_no_interval(result, capsys):
    print_ranking(result[0])
    out = capsys.readouterr().out
    assert "no intervals" in out and out.count("(no interval)") == 3 and "nan" not in out
    assert "intervals rest on: no interval: too few probes" in out


def test_plots_draw_the_prediction_without_an_interval(result, tmp_path):
    result, probes = result
    check = _check(result)
    path = plot_prediction(result, probes[result.selected], check, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0 and path.endswith("p.png")
    plot_selection(result, probes, str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 0
    rows = [
        {"selector": "AtS", "measured_loss": 2.0, "predicted_loss": 2.1, "interval_low": 1.5,
         "interval_high": 3.0, "held": True},
        {"selector": "AtS", "measured_loss": 2.2, "predicted_loss": 2.0,
         "interval_low": np.nan, "interval_high": np.nan, "held": None},
    ]  # fmt: skip
    plot_live_calibration(rows, str(tmp_path / "live.png"))
    assert (tmp_path / "live.png").stat().st_size > 0


def test_the_calibration_record_keeps_no_interval_apart_through_mlflow(result, tmp_path, capsys):
    """``target.interval_held`` is NaN in MLflow (neither 1 nor 0); ``lensllm calibration``
    reads it back as no interval and counts only the intervals that were stated."""
    from mlflow import MlflowClient

    from tasks.tracking.checked_runs import checked_selections
    from tasks.tracking.client import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("no-interval")
    stated = _check(result[0]).model_copy(update={"interval_low": 1.5, "interval_high": 2.5})
    for check in (_check(result[0]), stated):
        run = client.create_run(experiment, tags={T.RUN_KIND: "selection", T.TASK: "t"})
        run_id = run.info.run_id
        for key, value in (("selector", "AtS"), ("rank_on", "bits_per_byte")):
            client.log_param(run_id, key, value)
        client.log_param(run_id, "target_size", 1024)
        for key, value, step in check_metrics(check):
            client.log_metric(run_id, key, value, step=step)
        client.set_terminated(run_id)
    rows = checked_selections(Tracker(uri), "no-interval")
    assert [c.held for entry in rows for c in entry.checks] == [None, True]
    assert cli.main(["calibration", "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no interval stated: 1 check (counted apart, never as held)" in out
    assert "1 without an interval" in out and "AtS             2  1/1 (100%)" in out
    assert (tmp_path / "live_calibration.png").stat().st_size > 0
