"""Audit mode end to end on tiny models: every candidate trained up to the target, the task's
loss table in the replay format (scored back by ``lensllm benchmark``), the realized regret."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.pipeline.test_select_flow import LADDER, TARGET, _config, _second_candidate, _write

ZOO = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "zoo-wordnet"


@pytest.mark.integration
@pytest.mark.slow
def test_audit_writes_a_replayable_loss_table_and_the_regret(prefect_harness, tmp_path, capfd):
    from flows.cli import main

    other = _second_candidate(tmp_path / "cache" / "models", tmp_path / "tiny-llama-seed1234")
    config = _write(
        tmp_path / "audit.yaml",
        _config(tmp_path, ["tiny-llama", other], name="tiny-audit", registry={"enabled": False}),
    )
    out = tmp_path / "audit"
    assert main(["audit", "--config", config, "--out", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "RelAcc" in printed and "intervals held" in printed

    table = pd.read_csv(out / "tiny-audit.csv")
    sizes = [0]
    while sizes[-1] < TARGET:
        sizes.append(sizes[-1] * 2 if sizes[-1] else LADDER[0])
    assert list(table.columns) == ["config name", *map(str, sizes), "size", "family"]
    assert list(table["config name"]) == ["tiny-llama", other]
    assert list(table["family"]) == ["tiny-llama", "tiny-llama-seed1234"]
    assert (table[[str(d) for d in sizes]].to_numpy() > 0).all()
    report = json.loads((out / "audit.json").read_text())
    true = dict(zip(table["config name"], table[str(TARGET)], strict=True))
    assert report["best_measured"] == min(true, key=true.get)
    assert report["selected_was_best"] == (report["selected"] == report["best_measured"])
    assert report["rel_acc"] == (1.0 if report["selected_was_best"] else 0.0)  # two candidates
    assert report["intervals_checked"] == 2  # every candidate trained at the target
    by_method = {r["method"]: r for r in report["selectors"]}
    assert {"AtS", "Lens", "SubTuning"} <= set(by_method)
    assert "Audit of `tiny-audit`" in (out / "audit.md").read_text()
    # the weight spectra (spectral.enabled by default) beside the measured losses
    spectral = report["spectral"]
    assert [c["candidate"] for c in spectral["candidates"]] == ["tiny-llama", other]
    measured = [c["measured_loss"] for c in spectral["candidates"]]
    assert measured == pytest.approx(list(true.values()), abs=1e-6)  # the CSV has 6 decimals
    assert "## Weight-spectrum metrics" in (out / "audit.md").read_text()

    # the table is exactly the replay format: the benchmark scores every selector on it
    bench = tmp_path / "bench"
    uri = f"sqlite:///{tmp_path / 'bench.db'}"
    args = ["benchmark", "--table", str(out / "tiny-audit.csv"), "--out", str(bench)]
    assert main([*args, "--tracking-uri", uri, "--no-plots"]) == 0
    selection = pd.read_csv(bench / "selection.csv")
    assert set(selection.dataset) == {"TINY-AUDIT"}
    # the budgets with at least 3 sizes up to them: 64 (1/8; 32 has only 16 and 32 below it)
    assert sorted(selection.ratio.unique()) == [8]


def test_the_lowest_weighted_alpha_choice_is_scored_on_the_measured_losses():
    from flows.audit import spectral_choice

    table = pd.read_csv(ZOO / "zoo-wordnet.csv")  # measured at 512: gemma3-270m best
    names = list(table["config name"])
    metrics = {n: {"alpha_weighted": 1.0, "alpha": 2.0, "log_spectral_norm": 0.5} for n in names}
    metrics["smollm2-135m-l8"] = {**metrics["smollm2-135m-l8"], "alpha_weighted": 0.5}
    choice = spectral_choice(table, metrics, 512)
    assert choice["selected"] == "smollm2-135m-l8"  # the lowest weighted alpha
    assert choice["rel_acc"] == pytest.approx(0.0)  # the worst measured candidate
    assert choice["cost"] == 0.0
    assert [c["measured_loss"] for c in choice["candidates"]] == list(table["512"])
    del metrics["gemma3-270m"]
    with pytest.raises(ValueError, match="no weight-spectrum metrics for \\['gemma3-270m'\\]"):
        spectral_choice(table, metrics, 512)


def test_spectra_are_added_to_a_written_audit_without_changing_the_rest(tmp_path):
    from flows.audit import add_spectra
    from tasks.records.errors import MissingFileError

    out = Path(shutil.copytree(ZOO, tmp_path / "zoo"))
    before = json.loads((out / "audit.json").read_text())
    before.pop("spectral", None)
    table = pd.read_csv(out / "zoo-wordnet.csv")
    metrics = {
        n: {"alpha_weighted": float(i), "alpha": 3.0, "log_spectral_norm": -1.0}
        for i, n in enumerate(reversed(list(table["config name"])))
    }
    report = add_spectra(out, metrics)
    written = json.loads((out / "audit.json").read_text())
    assert written == report
    unchanged = ("spectral", "selectors")
    assert {k: v for k, v in written.items() if k not in unchanged} == {
        k: v for k, v in before.items() if k not in unchanged
    }
    assert {k for k in before if k not in unchanged} == {k for k in written if k not in unchanged}
    # the every-selector table gains the new selectors, the rows there before stay as they were
    rows = {r["method"]: r for r in written["selectors"]}
    for row in before["selectors"]:
        if row["method"] != "NLPMetrics":  # it ranks by the metrics given here
            assert rows[row["method"]] == pytest.approx(row)
    assert rows["NLPMetrics"]["selected"] == table["config name"].iloc[-1]
    assert rows["NLPMetrics"]["cost"] == 0.0 and "SuccessiveHalving" in rows
    assert written["spectral"]["selected"] == table["config name"].iloc[-1]
    text = (out / "audit.md").read_text()
    assert "## Every selector at budget" in text  # the rest of the report is still there
    assert text.count("## Every selector at budget") == 1 and "| NLPMetrics |" in text
    assert "## Predicted against measured at the target" in text
    assert f"picks **{table['config name'].iloc[-1]}**" in text
    add_spectra(out, metrics)  # again: the section is replaced, not repeated
    assert (out / "audit.md").read_text() == text
    assert text.count("## Weight-spectrum metrics") == 1
    with pytest.raises(MissingFileError, match="give the folder of a written audit"):
        add_spectra(tmp_path / "nowhere", metrics)
