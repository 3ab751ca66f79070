"""Time the replay benchmark on one loss table: all methods, all budgets.

usage: python benchmarks/replay_speed.py [TABLE]   (default ../shared/benchmarks/flan.csv)

Prints three figures measured in this one run on this machine:
  compute  - every selector at every budget plus the in-sample fit errors (lens_model only);
  flow     - the Prefect flow body (compute + CSVs + report + plots + MLflow logging);
  cli      - the whole `lensllm benchmark` command, Prefect's temporary API start included.
The issue's limit (10 s) applies to the benchmark itself; the CLI figure shows what a user waits.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.benchmark import DEFAULT_METHODS  # noqa: E402
from tasks.replay import fit_errors, run_replay  # noqa: E402
from tasks.tables import load_loss_table  # noqa: E402


def main() -> int:
    table_path = (
        sys.argv[1]
        if len(sys.argv) > 1
        else str(ROOT.parent / "shared" / "benchmarks" / "flan.csv")
    )
    if not Path(table_path).is_file():
        print(f"no table at {table_path}; pass one as the first argument")
        return 1
    table = load_loss_table(table_path)
    start = time.perf_counter()
    run_replay(table, DEFAULT_METHODS)
    fit_errors(table)
    compute = time.perf_counter() - start
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
    flow = float(out.stdout.split(" in ")[-1].split(" s")[0])
    print("| table | models | methods | budgets | compute s | flow s | cli s |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {table['name']} | {len(table['models'])} | {len(DEFAULT_METHODS)} | 7 "
        f"| {compute:.2f} | {flow:.2f} | {cli:.1f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
