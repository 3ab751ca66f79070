"""Task runners of the select flow, chosen by the ``runner`` section of the config.

Probes are submitted all at once and gathered (the fan-out); the runner decides where they
run: a thread pool in the flow's process, the processes of a Dask cluster (prefect-dask) or
Ray workers (prefect-ray). Results do not depend on the runner: probes are seeded and each sets
its own torch threads. A local Dask cluster listens on 127.0.0.1 only, without a dashboard; a
local Ray cannot be confined to loopback (see ``_ray_runner``).

An existing cluster (``runner.address``) must reach the flow's Prefect API (a server given by
``PREFECT_API_URL``, not the temporary one of a bare ``lensllm select``) and see ``cache_dir``.
"""

from __future__ import annotations

import functools
import logging
from contextlib import ExitStack
from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.config import RunnerConfig
from tasks.runtime.compute_threads import local_cores


def concurrent_probes(runner: RunnerConfig, cpu_count: int | None = None) -> int | None:
    """How many probes run at the same time on this machine; ``None`` for an existing cluster
    (``runner.address``), whose workers decide.

    ``max_workers`` when set; unset, 1 for the thread pool (probes one after another, as before
    runners were configurable) and the local core count for Dask and Ray, which is their own
    default: one single-threaded probe per core.
    """
    if runner.address is not None:
        return None
    if runner.max_workers is not None:
        return runner.max_workers
    return 1 if runner.kind == "thread" else cpu_count or local_cores()


def probe_threads(runner: RunnerConfig, cpu_count: int | None = None) -> int:
    """Torch threads per probe: the local cores split between concurrent probes, so they do not
    oversubscribe the machine.

    On an existing cluster (``runner.address``) the local core count says nothing about the
    workers' machines, and the cluster decides how many probes share one: each probe gets one
    thread, as Dask (one task per worker thread, by default one per core) and Ray (one CPU per
    task) count cores. A cluster started with fewer task slots than cores leaves the rest idle.
    """
    concurrent = concurrent_probes(runner, cpu_count)
    if concurrent is None:
        return 1
    cores = cpu_count or local_cores()
    return max(1, cores // concurrent)


def build_task_runner(runner: RunnerConfig) -> TaskRunner:
    """The Prefect task runner the config asks for (Dask and Ray are imported only then)."""
    workers = concurrent_probes(runner)
    if runner.kind == "dask":
        return _dask_runner(runner.address, workers)
    if runner.kind == "ray":
        return _ray_runner(runner.address, workers)
    return ThreadPoolTaskRunner(max_workers=workers)


def _dask_runner(address: str | None, workers: int | None) -> TaskRunner:
    from prefect_dask import DaskTaskRunner

    runner_class = _with_flow_api(DaskTaskRunner, quiet_logger="distributed")
    if address is not None:
        return runner_class(address=address)
    # Processes, not threads: each probe owns its torch thread pool (torch.set_num_threads is
    # process-wide). Scheduler and workers on loopback. The scheduler's HTTP server (health,
    # metrics) starts even without the dashboard, on 8787 unless told: a random loopback port.
    return runner_class(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
            "scheduler_kwargs": {"dashboard": False},
        },
    )


def _ray_runner(address: str | None, workers: int | None) -> TaskRunner:
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as err:
        raise ImportError(
            "runner.kind: ray needs prefect-ray: pip install -e '.[ray]' (or use kind: dask)"
        ) from err

    runner_class = _with_flow_api(RayTaskRunner)
    if address is not None:
        return runner_class(address=address)
    # Every task asks one CPU (Ray's default), so num_cpus bounds the probes at once. Ray 2.60
    # cannot be kept on loopback: ray.init turns 127.0.0.1 into the routable address and its
    # gRPC servers listen on all interfaces (token authentication is on by default). Hence
    # Dask is the scale-out path of choice on a shared host; the dashboard at least stays off.
    return runner_class(
        init_kwargs={"num_cpus": workers, "include_dashboard": False, "log_to_driver": False}
    )


class _FlowApiForWorkers:
    """Task runs in worker processes report to the flow's Prefect API.

    A worker takes the API URL from the flow's settings, sent with every task. A flow without a
    configured API (``lensllm select`` on a laptop) runs on a temporary server whose URL is not
    in its settings: each worker process would start a temporary server of its own (seconds of
    start-up, one more writer on the same SQLite file). While the runner is open, the flow's
    settings carry its server's URL. The runner's own INFO logs (``quiet_logger``: cluster
    start, workers joining, connections closed at shutdown, with tracebacks) stay out of the
    flow's log; its warnings do not.
    """

    quiet_logger: str | None = None

    def __enter__(self) -> Any:
        self._runner_context = ExitStack()
        url = _temporary_api_url()
        if url:
            self._runner_context.enter_context(temporary_settings({PREFECT_API_URL: url}))
        if self.quiet_logger:
            logger = logging.getLogger(self.quiet_logger)
            self._runner_context.callback(logger.setLevel, logger.level)
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        try:
            return super().__enter__()  # type: ignore[misc]
        except BaseException:
            self._runner_context.close()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)  # type: ignore[misc]
        finally:
            self._runner_context.close()


def _temporary_api_url() -> str | None:
    """The URL of this process's temporary Prefect server; None when an API is configured."""
    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # one per process: the flow run's own
    server.start()  # inside a flow run it is running already: returns at once
    return server.api_url


@functools.cache
def _with_flow_api(base: type[TaskRunner], quiet_logger: str | None = None) -> type[TaskRunner]:
    """``base`` whose workers report to the flow's API (prefect-dask/-ray imported lazily)."""
    namespace = {"__module__": __name__, "quiet_logger": quiet_logger}
    return type(base.__name__, (_FlowApiForWorkers, base), namespace)
