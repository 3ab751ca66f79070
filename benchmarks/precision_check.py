"""Does bf16 change the decision? The demo's selection in fp32 and in bf16, side by side.

Runs ``configs/demo.yaml`` twice with the select flow, ``probe.precision`` fp32 and then bf16,
each in a fresh cache folder (models linked from the project's cache, so nothing is taken from
an earlier run) with its own MLflow store there and the registry off (registering is not what
is compared). It reports every probe's test bits per byte, the ranking, the winner, the
prediction at the target with the measurement there, and the time of each step; the
selection time is the probes plus the winner's training at the target. Written to
``benchmarks/results/precision_check.md``.

    .venv/bin/python benchmarks/precision_check.py       # two demo selections, ~10 min
    .venv/bin/python benchmarks/precision_check.py --config configs/tiny.yaml --out /tmp/p.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PROJECT = Path(__file__).resolve().parents[1]

from flows.config import load_config  # noqa: E402
from flows.select import select_flow  # noqa: E402
from tasks.records.schema import SelectionSummary  # noqa: E402
from tasks.tracking import tags as T  # noqa: E402
from tasks.tracking.client import Tracker, tag_filter  # noqa: E402

PRECISIONS = ("fp32", "bf16")
SELECTION_STEPS = ("probes", "target training")


def run_one(config: str, precision: str, work: Path, models: Path, extra: list[str]) -> dict:
    """One selection at ``precision`` in a fresh cache under ``work``."""
    cache = work / precision
    cache.mkdir(parents=True)
    (cache / "models").symlink_to(models.resolve(), target_is_directory=True)
    overrides = [
        f"probe.precision={precision}",
        f"cache_dir={cache}",
        "registry.enabled=false",
        *extra,
    ]
    summary: SelectionSummary = select_flow(config, overrides)
    return {"summary": summary, "probes": probe_losses(summary)}


def probe_losses(summary: SelectionSummary) -> dict[tuple[str, int], float]:
    """(candidate, size) -> test bits per byte, from the selection's candidate runs."""
    tracker = Tracker(summary.tracking_uri)
    parent = tracker.client.get_run(summary.run_id)
    runs = tracker.client.search_runs(
        [parent.info.experiment_id], filter_string=tag_filter({T.PARENT_RUN: summary.run_id})
    )
    out = {}
    for run in runs:
        name = run.data.tags[T.CANDIDATE]
        for m in tracker.client.get_metric_history(run.info.run_id, "test_bits_per_byte"):
            out[(name, int(m.step))] = m.value
    return out


def markdown(config: str, results: dict[str, dict]) -> str:
    a, b = (results[p] for p in PRECISIONS)
    keys = sorted(set(a["probes"]) | set(b["probes"]))
    lines = [
        "# fp32 against bf16 on the demo's selection (benchmarks/precision_check.py)",
        "",
        f"`{config}`, each precision in a fresh cache, one after the other, registry off.",
        "",
        "| candidate | size | fp32 bits/byte | bf16 bits/byte | bf16 / fp32 - 1 |",
        "|---|---|---|---|---|",
    ]
    worst = 0.0
    for key in keys:
        x, y = a["probes"].get(key), b["probes"].get(key)
        rel = (y / x - 1) if x and y else None
        worst = max(worst, abs(rel)) if rel is not None else worst
        lines.append(
            f"| {key[0]} | {key[1]} | {_num(x)} | {_num(y)} | "
            f"{'' if rel is None else f'{100 * rel:+.2f} %'} |"
        )
    lines += ["", f"Largest difference: {100 * worst:.2f} % (acceptance: within 1 %).", ""]
    lines += _decision_rows(a["summary"], b["summary"])
    lines += _timing_rows(a["summary"], b["summary"])
    return "\n".join(lines) + "\n"


def _decision_rows(a: SelectionSummary, b: SelectionSummary) -> list[str]:
    rows = ["| | fp32 | bf16 |", "|---|---|---|"]
    rows.append(f"| ranking | {' > '.join(a.result.ranking)} | {' > '.join(b.result.ranking)} |")
    rows.append(f"| winner | {a.selected} | {b.selected} |")
    wa, wb = a.result.winner, b.result.winner
    rows.append(f"| predicted at the target | {wa.predicted_loss:.4f} | {wb.predicted_loss:.4f} |")
    ca = next((c for c in a.checks if c.candidate == a.selected), None)
    cb = next((c for c in b.checks if c.candidate == b.selected), None)
    rows.append(
        f"| measured at the target | {_num(ca and ca.measured_loss)} | "
        f"{_num(cb and cb.measured_loss)} |"
    )
    same = a.result.ranking == b.result.ranking and a.selected == b.selected
    return [*rows, "", f"Same ranking and winner: {'yes' if same else 'NO'}.", ""]


def _timing_rows(a: SelectionSummary, b: SelectionSummary) -> list[str]:
    steps = list(dict.fromkeys([*a.timings, *b.timings]))
    rows = ["| step | fp32 (s) | bf16 (s) |", "|---|---|---|"]
    rows += [f"| {s} | {a.timings.get(s, 0):.1f} | {b.timings.get(s, 0):.1f} |" for s in steps]
    sel_a = sum(a.timings.get(s, 0.0) for s in SELECTION_STEPS)
    sel_b = sum(b.timings.get(s, 0.0) for s in SELECTION_STEPS)
    rows.append(f"| **selection (probes + target training)** | {sel_a:.1f} | {sel_b:.1f} |")
    speedup = sel_a / sel_b if sel_b else float("nan")
    return [*rows, "", f"Selection speed-up bf16 over fp32: {speedup:.2f}x.", ""]


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", action="append", default=[], help="extra key.sub=value")
    parser.add_argument("--work-dir", default=None, help="the two caches (default: a tmp dir)")
    parser.add_argument(
        "--out", default=str(PROJECT / "benchmarks" / "results" / "precision_check.md")
    )
    args = parser.parse_args(argv)
    models = Path(load_config(args.config).cache_dir) / "models"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lensllm-precision-"))
    results = {p: run_one(args.config, p, work, models, args.set) for p in PRECISIONS}
    report = markdown(args.config, results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return results


if __name__ == "__main__":
    main()
