"""The live calibration record (``lensllm calibration``) read back from a temporary SQLite
MLflow store written by the project's own tracking code, and from audit.json files on disk:
every checked candidate counts, per interval level, each selection and audit once."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from flows import cli
from tasks.fit import fit_and_select
from tasks.records.errors import AuditFileError
from tasks.records.schema import PreparedData, TargetCheck
from tasks.reporting.live_record import by_level, read_audit
from tasks.tracking import tags as T
from tasks.tracking.checked_runs import checked_selections
from tasks.tracking.client import Tracker, default_tracking_uri
from tasks.tracking.runs import open_selection_run
from tasks.tracking.selection import log_checks, log_selection
from tests.conftest import probe_result

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ZOO_AUDIT = ROOT / "benchmarks" / "results" / "zoo-wordnet" / "audit.json"
SIZES = [0, 32, 64, 128]
CURVES = {"a": [3.0, 2.4, 2.2, 2.1], "b": [3.2, 2.6, 2.45, 2.4], "c": [2.9, 2.7, 2.6, 2.55]}
NAN = math.nan
# (level, [(candidate, interval_low, interval_high, measured)]) per selection: at 0.5, 2 of 3
# held, widths ln 2, ln 3, ln 1.5; at 0.9, 2 of 3 held, widths ln 4, ln 8, ln 16, and one
# check without an interval
SELECTIONS = [
    (0.5, [("a", 1.0, 2.0, 1.5), ("b", 2.0, 6.0, 7.0), ("c", 1.0, 1.5, 1.2)]),
    (0.9, [("a", 1.0, 4.0, 2.0), ("b", 1.0, 8.0, 0.5), ("c", NAN, NAN, 2.0)]),
    (0.9, [("a", 1.0, 16.0, 3.0)]),
]


def _data() -> PreparedData:
    return PreparedData(
        source="wordnet", train=[], val=[], test=[], sizes=SIZES[1:], fingerprint="f" * 16,
        subset_fingerprints={}, val_fingerprint="v" * 64, test_fingerprint="t" * 64,
        n_available=1000, n_train_available=800,
    )  # fmt: skip


def _check(level, candidate, low, high, measured) -> TargetCheck:
    predicted = math.sqrt(low * high) if math.isfinite(low) else 2.0
    return TargetCheck(
        candidate=candidate, rank=ord(candidate) - ord("a") + 1, target_size=1024,
        trained_examples=1024, rank_on="bits_per_byte", measured_loss=measured,
        predicted_loss=predicted, interval_low=low, interval_high=high, level=level,
    )  # fmt: skip


def _log_selection(tracker: Tracker, key: str, checks: list[TargetCheck], *, candidates=True):
    """One selection as ``lensllm select`` logs it (``candidates=False``: a parent run with its
    checks only, as records were kept before each candidate's run carried its check)."""
    probes = {n: [probe_result(n, d, v) for d, v in zip(SIZES, c, strict=True)]
              for n, c in CURVES.items()}  # fmt: skip
    result = fit_and_select(
        probes, dict.fromkeys(CURVES, 1000), target_size=1024, budget=128, selector="AtS"
    )
    run_id, _ = open_selection_run(
        tracker, "live", f"select-{key}", {T.SELECTION_KEY: key, T.TASK: "t"},
        {"selector": "AtS", "rank_on": "bits_per_byte", "target_size": 1024}, "name: t\n",
    )  # fmt: skip
    if candidates:
        log_selection(
            tracker, run_id, data=_data(), probes=probes, result=result,
            n_params=dict.fromkeys(CURVES, 1000), ntk={}, plots=[], checks=checks,
        )  # fmt: skip
    log_checks(tracker, run_id, checks)
    tracker.end_run(run_id)
    return run_id


@pytest.fixture
def store(tmp_path):
    uri = default_tracking_uri(str(tmp_path / "lens"))
    tracker = Tracker(uri)
    run_ids = [
        _log_selection(tracker, f"sel{i}", [_check(level, *c) for c in checks])
        for i, (level, checks) in enumerate(SELECTIONS)
    ]
    return uri, tracker, run_ids


def test_every_checked_candidate_is_on_its_own_run_and_counted(store):
    uri, tracker, run_ids = store
    client = tracker.client
    children = client.search_runs(
        [client.get_run(run_ids[0]).info.experiment_id],
        f"tags.`{T.PARENT_RUN}` = '{run_ids[0]}'",
    )
    held = {r.data.tags[T.CANDIDATE]: r.data.metrics["target.interval_held"] for r in children}
    assert held == {"a": 1.0, "b": 0.0, "c": 1.0}  # the miss is on b's own run
    record = checked_selections(tracker)
    assert [e.source for e in record] == run_ids
    assert [len(e.checks) for e in record] == [3, 3, 1]
    assert not any(e.winner_only for e in record)


def test_shares_and_median_widths_per_level(store, tmp_path, capsys):
    uri, tracker, _ = store
    levels = by_level(c for e in checked_selections(tracker) for c in e.checks)
    assert [(r.level, r.stated, r.held) for r in levels] == [(0.5, 3, 2), (0.9, 3, 2)]
    assert [r.median_log_width for r in levels] == pytest.approx([math.log(2), math.log(8)])
    out_dir = tmp_path / "cal"
    assert cli.main(["calibration", "--tracking-uri", uri, "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "Every candidate trained at the target and measured counts" in out
    assert "     50%       3     2    67%             0.693" in out
    assert "     90%       3     2    67%             2.079" in out
    assert "no interval stated: 1 check (counted apart, never as held)" in out
    assert "missed b (+0.703)" in out and "missed b (-1.733)" in out
    rows = list(csv.DictReader((out_dir / "live_calibration.csv").open()))
    assert len(rows) == 7 and sum(r["held"] == "False" for r in rows) == 2
    summary = json.loads((out_dir / "live_calibration.json").read_text())
    assert (summary["checks"], summary["no_interval"]) == (7, 1)
    assert summary["levels"][1]["share_held"] == pytest.approx(2 / 3)


def test_a_record_kept_before_candidates_carried_their_checks_counts_them_all(tmp_path):
    tracker = Tracker(default_tracking_uri(str(tmp_path / "lens")))
    checks = [_check(0.5, *c) for c in SELECTIONS[0][1]]
    _log_selection(tracker, "old", checks, candidates=False)
    (entry,) = checked_selections(tracker)
    assert [c.held for c in entry.checks] == [True, False, True] and not entry.winner_only


def test_an_audit_on_disk_is_counted_once(store, tmp_path, capsys):
    uri, tracker, run_ids = store
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    shutil.copy(ZOO_AUDIT, audit_dir / "audit.json")
    report = json.loads(ZOO_AUDIT.read_text())
    args = ["calibration", "--tracking-uri", uri, "--out", str(tmp_path / "cal")]
    assert cli.main([*args, "--audit", str(audit_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 selections and 1 audit" in out and "11 checks at the target" in out
    assert "     90%       7     6    86%" in out  # the audit's 4 checks at 90 %, all held
    assert f"audit     {report['task']}" in out
    # an audit logged to MLflow (its selection run holds audit/audit.json) is listed as one,
    # and the same audit on disk adds nothing
    logged = tmp_path / "logged"
    logged.mkdir()
    (logged / "audit.json").write_text(json.dumps({**report, "selection_run": run_ids[0]}))
    tracker.log_artifact(run_ids[0], str(logged / "audit.json"), "audit")
    assert [e.kind for e in checked_selections(tracker)] == ["audit", "selection", "selection"]
    assert cli.main([*args, "--audit", str(logged)]) == 0
    out = capsys.readouterr().out
    assert "2 selections and 1 audit " in out and ": 7 checks at the target." in out
    assert f"already tracked as run {run_ids[0][:8]}, counted once" in out


def test_a_corrupt_audit_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "audit.json"
    bad.write_text(json.dumps({"task": "t", "checks": [{"candidate": "a"}]}))
    with pytest.raises(AuditFileError, match="not an audit report that `lensllm audit` wrote"):
        read_audit(bad)
    assert cli.main(["calibration", "--audit", str(tmp_path / "nowhere")]) == 2


AUDITS = [
    Path(__file__).resolve().parents[2] / "benchmarks" / "results" / name
    for name in ("audit-translation", "audit-examples")
]


def test_the_record_refits_the_error_model_from_its_audits(tmp_path, capsys):
    """``--refit`` fits the error model on the tables the audits wrote beside their reports,
    to the same numbers as ``lensllm calibration fit`` on those tables."""
    from tasks.priors.prior_file import load_error_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    refit, fit = tmp_path / "refit.json", tmp_path / "fit.json"
    args = ["calibration", "--tracking-uri", uri, "--out", str(tmp_path / "out")]
    audits = [x for a in AUDITS for x in ("--audit", str(a))]
    assert cli.main([*args, *audits, "--refit", str(refit)]) == 0
    out = capsys.readouterr().out
    assert "refitting the error model on 2 tables" in out and f"wrote {refit}" in out
    assert "AUDIT-TRANSLATION" in load_error_model(refit).source
    tables = [x for a in AUDITS for x in ("--table", str(a / f"{a.name}.csv"))]
    assert cli.main(["calibration", "fit", *tables, "--out", str(fit)]) == 0
    assert json.loads(refit.read_text())["families"] == json.loads(fit.read_text())["families"]


def test_a_refit_without_enough_tables_is_a_usage_error(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["calibration", "--tracking-uri", uri, "--out", str(tmp_path / "out")]
    assert cli.main([*args, "--audit", str(AUDITS[0]), "--refit", str(tmp_path / "p.json")]) == 2
    assert "--refit needs at least two loss tables" in capsys.readouterr().err
    assert cli.main([*args, "--table", str(AUDITS[0] / "audit-translation.csv")]) == 2
    assert "--table is for --refit FILE" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
