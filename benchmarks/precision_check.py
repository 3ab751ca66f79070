"""Does bf16 change the decision? The demo's selection in fp32 and in bf16, side by side.

Runs ``configs/demo.yaml`` with the select flow three times, one after the other, each in a
fresh cache folder (models linked from the project's cache, so nothing is taken from an
earlier run) with its own MLflow store there and the registry off (registering is not what
is compared):

* the code before the throughput work (``--baseline``, default ``BASELINE``: the last commit
  of main before probe.precision, length bucketing and target-only logits), checked out in a
  temporary git worktree and run in a subprocess with this environment: fp32, batches padded to
  their longest example, logits over the vocabulary at every position;
* this code with ``probe.precision`` fp32, then bf16.

It reports every probe's test bits per byte (fp32 and bf16), the ranking, the winner, the
prediction at the target with the measurement there, and the time of each step; the
selection time is the probes plus the winner's training at the target. Written to
``benchmarks/results/precision_check.md``.

On a device without fast bf16 (a CPU with neither AMX nor AVX512-BF16) the bf16 run is left
out and the report says why: it then compares this code's fp32 path with the baseline's, what
the throughput work gives such a machine.

    .venv/bin/python benchmarks/precision_check.py       # three demo selections, ~15 min
    .venv/bin/python benchmarks/precision_check.py --config configs/tiny.yaml --out /tmp/p.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
from tasks.training.precision import bf16_unavailable  # noqa: E402

PRECISIONS = ("fp32", "bf16")
SELECTION_STEPS = ("probes", "target training")
# main just before the throughput work was merged (3f321ce^1): fp32, padded batches, full logits
BASELINE = "f37ab8ac3f94cd4bc464120b727bf6473bcd2352"
# Run in the baseline's worktree: its select flow, then what the report needs, as JSON.
_BASELINE_SCRIPT = """
import json, sys
from flows.select import select_flow
s = select_flow(sys.argv[1], sys.argv[2:])
w = s.result.winner
check = next((c for c in s.checks if c.candidate == s.selected), None)
print("BASELINE-JSON " + json.dumps({
    "timings": s.timings, "ranking": list(s.result.ranking), "selected": s.selected,
    "predicted": w.predicted_loss, "measured": check.measured_loss if check else None}))
"""


def usable_precisions(config: str) -> tuple[tuple[str, ...], str | None]:
    """The precisions this device can run the config's probes in, and why bf16 is left out."""
    left_out = bf16_unavailable(load_config(config).probe)
    return (("fp32",) if left_out else PRECISIONS), left_out


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


def run_baseline(rev: str, config: str, work: Path, models: Path) -> dict:
    """The demo's selection on the code at ``rev`` (a temporary git worktree), fp32 as it was
    then, in a fresh cache under ``work``; its timings and decision."""
    src, cache = work / "baseline-src", work / "baseline"
    cache.mkdir(parents=True)
    (cache / "models").symlink_to(models.resolve(), target_is_directory=True)
    git = ["git", "-C", str(PROJECT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(src), rev], check=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(src), "PREFECT_HOME": str(cache / "prefect")}
        overrides = [f"cache_dir={cache}", "registry.enabled=false"]
        proc = subprocess.run(
            [sys.executable, "-c", _BASELINE_SCRIPT, config, *overrides],
            cwd=src, env=env, capture_output=True, text=True,
        )  # fmt: skip
        lines = [x for x in proc.stdout.splitlines() if x.startswith("BASELINE-JSON ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"the baseline selection at {rev[:12]} failed (exit {proc.returncode}):\n"
                + proc.stderr[-3000:]
            )
        return json.loads(lines[-1].removeprefix("BASELINE-JSON "))
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(src)], check=False)


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


def markdown(
    config: str, results: dict[str, dict], baseline: dict | None = None, left_out: str | None = None
) -> str:
    names = list(results)
    keys = sorted(set().union(*(r["probes"] for r in results.values())))
    both = names == list(PRECISIONS)
    head = ["candidate", "size", *(f"{n} bits/byte" for n in names)]
    head += ["bf16 / fp32 - 1"] if both else []
    lines = [
        "# fp32 against bf16 on the demo's selection (benchmarks/precision_check.py)"
        if both
        else "# fp32 now and before, on the demo's selection (benchmarks/precision_check.py)",
        "",
        f"`{config}`, each run in a fresh cache, one after the other, registry off"
        + (f"; baseline: commit {baseline['rev'][:12]}." if baseline else "."),
        *(["", f"bf16 left out, this device cannot run it fast: {left_out}"] if left_out else []),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    worst = 0.0
    for key in keys:
        values = [results[n]["probes"].get(key) for n in names]
        cells = [key[0], str(key[1]), *(_num(v) for v in values)]
        if both:
            x, y = values
            rel = (y / x - 1) if x and y else None
            worst = max(worst, abs(rel)) if rel is not None else worst
            cells.append("" if rel is None else f"{100 * rel:+.2f} %")
        lines.append("| " + " | ".join(cells) + " |")
    if both:
        lines += ["", f"Largest difference: {100 * worst:.2f} % (acceptance: within 1 %)."]
    lines.append("")
    cols = [(n, results[n]["summary"]) for n in names]
    lines += _decision_rows(cols, baseline)
    lines += _timing_rows(cols, baseline)
    return "\n".join(lines) + "\n"


def _decisions(summary: SelectionSummary) -> dict:
    check = next((c for c in summary.checks if c.candidate == summary.selected), None)
    return {
        "ranking": list(summary.result.ranking),
        "selected": summary.selected,
        "predicted": summary.result.winner.predicted_loss,
        "measured": check.measured_loss if check else None,
    }


def _decision_rows(runs: list[tuple[str, SelectionSummary]], baseline: dict | None) -> list[str]:
    cols = [(n, _decisions(s)) for n, s in runs]
    if baseline:
        cols.insert(0, ("fp32 before", baseline))
    rows = ["| | " + " | ".join(n for n, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    rows.append("| ranking | " + " | ".join(" > ".join(d["ranking"]) for _, d in cols) + " |")
    rows.append("| winner | " + " | ".join(d["selected"] for _, d in cols) + " |")
    rows.append("| predicted at the target | " + " | ".join(_num(d["predicted"]) for _, d in cols)
                + " |")  # fmt: skip
    rows.append("| measured at the target | " + " | ".join(_num(d["measured"]) for _, d in cols)
                + " |")  # fmt: skip
    same = all(d["ranking"] == cols[-1][1]["ranking"] and d["selected"] == cols[-1][1]["selected"]
               for _, d in cols)  # fmt: skip
    return [*rows, "", f"Same ranking and winner: {'yes' if same else 'NO'}.", ""]


def _timing_rows(runs: list[tuple[str, SelectionSummary]], baseline: dict | None) -> list[str]:
    cols = [(n, s.timings) for n, s in runs]
    if baseline:
        cols.insert(0, ("fp32 before", baseline["timings"]))
    steps = list(dict.fromkeys(s for _, t in cols for s in t))
    rows = ["| step | " + " | ".join(f"{n} (s)" for n, _ in cols) + " |"]
    rows.append("|---|" + "---|" * len(cols))
    rows += [f"| {s} | " + " | ".join(f"{t.get(s, 0):.1f}" for _, t in cols) + " |" for s in steps]
    sel = {n: sum(t.get(s, 0.0) for s in SELECTION_STEPS) for n, t in cols}
    rows.append(
        "| **selection (probes + target training)** | "
        + " | ".join(f"{v:.1f}" for v in sel.values()) + " |"
    )  # fmt: skip
    out = [*rows, ""]
    if "bf16" in sel:
        out.append(f"Selection speed-up bf16 over fp32: {_ratio(sel['fp32'], sel['bf16'])}.")
    if baseline and "bf16" in sel:
        out.append(
            f"Selection speed-up bf16 over fp32 before the throughput work (today's path when the "
            f"issue was filed): {_ratio(sel['fp32 before'], sel['bf16'])}; fp32 now over fp32 "
            f"before: {_ratio(sel['fp32 before'], sel['fp32'])}."
        )
    elif baseline:
        out.append(
            f"Selection speed-up of fp32 now over fp32 before the throughput work (bucketed "
            f"batches, target-only logits, one compute thread): "
            f"{_ratio(sel['fp32 before'], sel['fp32'])}."
        )
    return [*out, ""]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", action="append", default=[], help="extra key.sub=value")
    parser.add_argument("--work-dir", default=None, help="the caches (default: a tmp dir)")
    parser.add_argument(
        "--baseline", default=BASELINE, help="git revision of the fp32 path to compare with"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline run")
    parser.add_argument(
        "--out", default=str(PROJECT / "benchmarks" / "results" / "precision_check.md")
    )
    args = parser.parse_args(argv)
    models = Path(load_config(args.config).cache_dir) / "models"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lensllm-precision-"))
    baseline = None
    if not args.no_baseline:
        print(f"baseline: {args.config} on commit {args.baseline[:12]} ...", flush=True)
        baseline = run_baseline(args.baseline, args.config, work, models) | {"rev": args.baseline}
    precisions, left_out = usable_precisions(args.config)
    if left_out:
        print(f"bf16 left out: {left_out}", flush=True)
    results = {p: run_one(args.config, p, work, models, args.set) for p in precisions}
    report = markdown(args.config, results, baseline, left_out)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return results


if __name__ == "__main__":
    main()
