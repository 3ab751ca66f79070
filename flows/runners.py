"""Task runners of the select flow, chosen by the ``runner`` section of the config."""

from __future__ import annotations

import os

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.config import RunnerConfig


def concurrent_probes(runner: RunnerConfig) -> int:
    """How many probes can run at the same time on this machine."""
    return runner.max_workers


def probe_threads(runner: RunnerConfig, cpu_count: int | None = None) -> int:
    """Torch threads per probe: the cores split between concurrent probes, so they do not
    oversubscribe the machine."""
    cores = cpu_count or os.cpu_count() or 1
    return max(1, cores // concurrent_probes(runner))


def build_task_runner(runner: RunnerConfig) -> TaskRunner:
    """The Prefect task runner the config asks for."""
    return ThreadPoolTaskRunner(max_workers=runner.max_workers)
