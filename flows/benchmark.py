"""Replay benchmark flow: every selector on published loss tables (docs/replay.md).

The work is ``flows.benchmark_run.run_benchmark``; this flow runs it with each step as a Prefect
task, for the ``replay-benchmark`` deployment and ``lensllm benchmark --prefect``. Plain
``lensllm benchmark`` runs the same function without Prefect.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.benchmark_run import (
    DEFAULT_METHODS,
    BenchmarkSettings,
    Steps,
    plain_steps,
    run_benchmark,
)

__all__ = ["DEFAULT_METHODS", "benchmark_flow", "task_steps"]


def task_steps() -> Steps:
    """The benchmark's steps as Prefect tasks (no result caching: a replay takes seconds)."""
    plain = plain_steps()
    names = {
        "load": "load-loss-table",
        "replay": "replay-selectors",
        "fit_errors": "fit-errors",
        "cost_accuracy": "cost-accuracy",
        "log_run": "log-benchmark-run",
    }
    return Steps(
        **{
            field: task(name=name, cache_policy=NO_CACHE)(getattr(plain, field))
            for field, name in names.items()
        }
    )


@flow(name="replay-benchmark")
def benchmark_flow(settings: BenchmarkSettings) -> dict:
    """Run ``methods`` on each loss table; write selection.csv, calibration.csv, pairwise.csv,
    fit_error.csv, cost_accuracy.csv, report.md and plots; log to MLflow
    (``flows.benchmark_run.run_benchmark``).

    Returns the output folder, the MLflow run id per dataset and the wall time.
    """
    logger = get_run_logger()
    return run_benchmark(settings, steps=task_steps(), log=logger.info)
