"""Long-lived threads for a process's torch work, so that no idle OpenMP team outlives its use.

libgomp (the OpenMP runtime of torch's CPU kernels) gives every thread that starts a parallel
region a team of its own, kept until that thread exits. Prefect runs each flow's tasks on the
threads of that flow's task runner, so the probes (the select flow's runner) and the training
at the target (the train flow's runner, a new thread) would each start a team, and the probes'
team stays while the training runs. With more OpenMP threads than cores libgomp stops spinning
at its barriers and puts threads to sleep at every one: a bf16 LoRA step of SmolLM2-135M took
706 ms against 379 ms on this 2-core machine (``benchmarks/thread_arrangements.py``). Building a
derived model and reading weights for their spectra run torch kernels too, so they run here
as well (``tasks.models.store``, ``tasks.weight_metrics``).

:func:`run_on_compute_thread` runs a function on one of ``slots`` daemon threads kept for the
life of the process, so the teams are at most ``slots`` and each is reused. ``slots`` is how
many torch jobs run at a time: the cores divided by each job's torch threads. The caller waits
for the result; Prefect's run context goes with the call (``contextvars``), so the run's logger
and progress work there. A call made from a compute thread runs inline.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_pool: _ComputeThreads | None = None
_local = threading.local()


def local_cores() -> int:
    """The cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def compute_slots(threads: int | None, cores: int | None = None) -> int:
    """How many torch jobs of ``threads`` threads each fit the cores at once (at least 1)."""
    cores = cores or local_cores()
    return max(1, cores // threads) if threads else 1


class _ComputeThreads:
    """``slots`` daemon threads taking calls from one queue. Daemon: an interrupted run does
    not wait at exit for a probe nobody will read (completed probes are already cached)."""

    def __init__(self, slots: int):
        self.slots = slots
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"lensllm-compute-{i}", daemon=True)
            for i in range(slots)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        _local.compute = True
        _flush_denormals()
        while (call := self._calls.get()) is not None:
            future, context, fn = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(context.run(fn))
                except BaseException as err:  # handed to the caller, who raises it
                    future.set_exception(err)
            del call, future, context, fn  # drop the result's references while idle

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, contextvars.copy_context(), fn))
        return future

    def retire(self) -> None:
        """Let the threads finish the queued calls and exit (their teams go with them)."""
        for _ in self._threads:
            self._calls.put(None)


def _flush_denormals() -> None:
    """Flush denormals to zero in this thread before it starts an OpenMP team. The team's
    threads are created with a copy of its floating-point mode and keep it, so a team started
    before ``configure_cpu`` (by a model build, say) computed in denormals on every core but
    one: the demo's first NTK took 45 s instead of 8-12."""
    import torch

    torch.set_flush_denormal(True)


def run_on_compute_thread(fn: Callable[..., T], *args, threads: int | None = None, **kwargs) -> T:
    """``fn(*args, threads=threads, **kwargs)`` on a compute thread; its result or its error.

    ``threads`` is the torch threads the job will set (``None``: every core); it decides the
    slots. A different slot count from the current one (another config in the same process)
    retires the current threads once their queued work is done.
    """
    call = lambda: fn(*args, threads=threads, **kwargs)  # noqa: E731
    if getattr(_local, "compute", False):
        return call()
    global _pool
    slots = compute_slots(threads)
    with _lock:
        if _pool is None or _pool.slots != slots:
            if _pool is not None:
                _pool.retire()
            _pool = _ComputeThreads(slots)
        pool = _pool
    return pool.submit(call).result()
