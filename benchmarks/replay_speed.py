"""Time the replay benchmark on one loss table: all methods, all budgets, all outputs.

usage: python benchmarks/replay_speed.py [TABLE] [--repeat N]
       (default TABLE: ../shared/benchmarks/flan.csv; N: CLI runs, the fastest is reported)

Prints three figures measured in this one run on this machine:
  compute - every selector at every budget (selections, calibrated and heuristic intervals at
            three nominal levels, pairwise probabilities), the in-sample fit errors and the
            cost-accuracy sweep (lens_model only, in this process);
  flow    - the benchmark's own time as ``lensllm benchmark`` reports it (compute, CSVs,
            report, plots and MLflow logging; MLflow's import and store set-up run in a helper
            process alongside);
  cli     - the whole ``lensllm benchmark`` command, a fresh process and a fresh MLflow SQLite
            store, interpreter start and imports included: what a user waits.
Also prints the machine's load average, since the machine is shared.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flows.benchmark_run import DEFAULT_METHODS
from tasks.reporting.loss_tables import load_loss_table
from tasks.reporting.replay_report import fit_errors, replay_table, run_cost_accuracy

ROOT = Path(__file__).resolve().parents[1]


def cli_once(table_path: str) -> tuple[float, float]:
    """(wall seconds of the command, the benchmark's own seconds as it reports them)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "benchmark",
                "--table",
                table_path,
                "--out",
                f"{tmp}/out",
                "--tracking-uri",
                f"sqlite:///{tmp}/mlflow.db",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        cli = time.perf_counter() - start
    done = re.search(r"done in [\d.]+ s \(([\d.]+) s with MLflow\)", out.stdout)
    return cli, float(done.group(1)) if done else float("nan")


def main() -> int:
    args = sys.argv[1:]
    repeat = 1
    if "--repeat" in args:
        i = args.index("--repeat")
        repeat = int(args[i + 1])
        del args[i : i + 2]
    table_path = args[0] if args else str(ROOT.parent / "shared" / "benchmarks" / "flan.csv")
    if not Path(table_path).is_file():
        print(f"no table at {table_path}; pass one as the first argument")
        return 1
    table = load_loss_table(table_path)
    start = time.perf_counter()
    replay_table(table, DEFAULT_METHODS)
    fit_errors(table)
    run_cost_accuracy(table)
    compute = time.perf_counter() - start
    runs = [cli_once(table_path) for _ in range(repeat)]
    cli, flow = min(runs)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} cores")
    print("| table | models | methods | budgets | compute s | flow s | cli s |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {table.name} | {len(table.models)} | {len(DEFAULT_METHODS)} | 7 "
        f"| {compute:.2f} | {flow:.2f} | {cli:.1f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
