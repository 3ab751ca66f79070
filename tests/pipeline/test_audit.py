"""Audit mode end to end on tiny models: every candidate trained up to the target, the task's
loss table in the replay format (scored back by ``lensllm benchmark``), the realized regret."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.pipeline.test_select_flow import LADDER, TARGET, _config, _second_candidate, _write

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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

    # the table is exactly the replay format: the benchmark scores every selector on it
    bench = tmp_path / "bench"
    uri = f"sqlite:///{tmp_path / 'bench.db'}"
    args = ["benchmark", "--table", str(out / "tiny-audit.csv"), "--out", str(bench)]
    assert main([*args, "--tracking-uri", uri, "--no-plots"]) == 0
    selection = pd.read_csv(bench / "selection.csv")
    assert set(selection.dataset) == {"TINY-AUDIT"}
    # the budgets with at least 3 sizes up to them: 64 (1/8; 32 has only 16 and 32 below it)
    assert sorted(selection.ratio.unique()) == [8]
