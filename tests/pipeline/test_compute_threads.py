"""The compute threads that run a process's torch work (tasks.runtime.compute_threads)."""

from __future__ import annotations

import contextvars
import threading

import pytest

from tasks.runtime import compute_threads as ct


def _where(*, threads):
    return threading.current_thread().name, threads


def test_calls_from_different_threads_run_on_one_long_lived_thread():
    seen = []
    callers = [
        threading.Thread(target=lambda: seen.append(ct.run_on_compute_thread(_where, threads=None)))
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
        caller.join()
    names = {name for name, _ in seen}
    assert len(seen) == 3 and names == {"lensllm-compute-0"}
    assert all(threads is None for _, threads in seen)


def test_the_error_reaches_the_caller_and_the_thread_survives():
    def fail(*, threads):
        raise ValueError("bad probe")

    with pytest.raises(ValueError, match="bad probe"):
        ct.run_on_compute_thread(fail, threads=None)
    assert ct.run_on_compute_thread(_where, threads=None)[0] == "lensllm-compute-0"


def test_the_callers_context_goes_with_the_call():
    """Prefect's run context (logger, progress) lives in context variables."""
    var = contextvars.ContextVar("run", default="none")
    token = var.set("flow-run-42")
    try:
        assert ct.run_on_compute_thread(lambda *, threads: var.get(), threads=None) == "flow-run-42"
    finally:
        var.reset(token)


def test_a_call_from_a_compute_thread_runs_inline():
    def outer(*, threads):
        return ct.run_on_compute_thread(_where, threads=threads)

    assert ct.run_on_compute_thread(outer, threads=None)[0] == "lensllm-compute-0"


@pytest.mark.parametrize(
    ("threads", "cores", "slots"), [(None, 16, 1), (16, 16, 1), (8, 16, 2), (1, 2, 2), (4, 2, 1)]
)
def test_slots_are_the_jobs_that_fit_the_cores(threads, cores, slots):
    assert ct.compute_slots(threads, cores) == slots


def test_concurrent_jobs_get_their_own_threads_when_they_fit(monkeypatch):
    """Two probes of one thread each on two cores run at the same time, on two threads."""
    monkeypatch.setattr(ct, "local_cores", lambda: 2)
    barrier = threading.Barrier(2, timeout=10)

    def job(*, threads):
        barrier.wait()  # both must be running at once, or this times out
        return threading.current_thread().name

    names = []
    callers = [
        threading.Thread(target=lambda: names.append(ct.run_on_compute_thread(job, threads=1)))
        for _ in range(2)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert sorted(names) == ["lensllm-compute-0", "lensllm-compute-1"]
    # back to one job on every core: the two threads are retired, one serves
    assert ct.run_on_compute_thread(_where, threads=None)[0] == "lensllm-compute-0"


def test_a_compute_thread_flushes_denormals_before_its_first_job():
    """Its OpenMP team copies the thread's floating-point mode when the team starts; a team
    started by work before configure_cpu computed in denormals (a 45 s NTK instead of 8)."""
    import torch

    fresh = ct._ComputeThreads(1)
    try:
        tiny = fresh.submit(lambda: (torch.tensor([1e-39]) * 1.0).item()).result(timeout=30)
    finally:
        fresh.retire()
    assert tiny == 0.0


def test_a_model_build_runs_on_a_compute_thread(tmp_path):
    """Building a derived model runs torch kernels; on the flow's thread its OpenMP team made
    every later step slower (tasks.models.store.build_cached)."""
    from tasks.models.store import build_cached, is_complete

    seen = []

    def build(dest):
        seen.append(threading.current_thread().name)
        (dest / "config.json").write_text("{}")
        return {"name": "fake"}

    folder = build_cached(tmp_path / "model", build)
    assert seen == ["lensllm-compute-0"] and is_complete(folder)
