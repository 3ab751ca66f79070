"""Task runners of the select flow: the config section, torch threads per probe, and the same
tiny selection run on the thread pool, a local Dask cluster, an existing Dask cluster and Ray.

What a user checks after switching runners: the same ranking and the same selected candidate,
the same probe losses, and that probes really ran in several worker processes.
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import psutil
import pytest
import yaml
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import ConfigError, RunnerConfig, load_config
from flows.runners import build_task_runner, concurrent_probes, probe_threads
from tasks.records.schema import ProbeResult
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker

BASE = {
    "name": "tiny-runners",
    "dataset": {"source": "wordnet", "val_size": 16, "test_size": 16, "max_examples": 2000},
    "candidates": ["tiny-llama", "/models/other"],
    "probe": {
        "epochs": 1,
        "batch_size": 8,
        "max_seq_len": 32,
        "learning_rate": 0.01,
        "device": "cpu",
    },
    "ladder": {"first_size": 16, "budget": 64},
    "ntk": {"enabled": False},
    "target_size": 512,
    "registry": {"enabled": False},
}
LADDER = [0, 16, 32, 64]  # zero-shot, then the ladder
# Probes are seeded and run the same float32 ops in whichever process; only the torch thread
# count can reorder CPU reductions (the default pool gives a probe every core, a 2-worker
# cluster one each). Measured on 2 cores: bitwise identical (the fixture prints the largest
# difference). 1e-5 leaves room for reordered float32 sums (eps 1.2e-7) on wider machines and
# is still 30x below the closest pair of probe losses here (3e-4 apart, the two candidates at
# 16 examples) and 1000x below the gap between the predicted losses that rank them (2e-2).
LOSS_RTOL = 1e-5


def _write(tmp_path: Path, data: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _runner(tmp_path: Path, runner: dict | None) -> RunnerConfig:
    data = dict(BASE)
    if runner is not None:
        data["runner"] = runner
    return load_config(_write(tmp_path, data)).runner


# --------------------------------------------------------------------------------------------
# config and threads (fast)


def test_default_runner_is_one_thread_pool_worker_on_all_cores(tmp_path):
    runner = _runner(tmp_path, None)
    assert (runner.kind, runner.max_workers, runner.address) == ("thread", None, None)
    assert concurrent_probes(runner) == 1
    assert probe_threads(runner, cpu_count=8) == 8
    task_runner = build_task_runner(runner)
    assert isinstance(task_runner, ThreadPoolTaskRunner) and task_runner._max_workers == 1


@pytest.mark.parametrize(
    ("runner", "cores", "concurrent", "threads"),
    [
        ({"kind": "thread", "max_workers": 2}, 8, 2, 4),
        ({"kind": "thread", "max_workers": 3}, 8, 3, 2),  # floor: never oversubscribe
        ({"kind": "thread", "max_workers": 4}, 2, 4, 1),  # at least one thread
        ({"kind": "dask", "max_workers": 2}, 16, 2, 8),
        ({"kind": "dask"}, 16, 16, 1),  # unset: one single-threaded probe per core
        ({"kind": "ray"}, 4, 4, 1),
        ({"kind": "dask", "address": "tcp://10.0.0.5:8786"}, 64, None, 1),  # cluster decides
        ({"kind": "ray", "address": "ray://10.0.0.5:10001"}, 64, None, 1),
    ],
)
def test_probe_threads_split_the_cores_between_concurrent_probes(
    tmp_path, runner, cores, concurrent, threads
):
    cfg = _runner(tmp_path, runner)
    assert concurrent_probes(cfg, cpu_count=cores) == concurrent
    assert probe_threads(cfg, cpu_count=cores) == threads


@pytest.mark.parametrize(
    ("runner", "message"),
    [
        ({"kind": "thread", "address": "tcp://127.0.0.1:8786"}, r"runner\.address .*runner\.kind"),
        (
            {"kind": "dask", "address": "tcp://127.0.0.1:8786", "max_workers": 2},
            r"runner\.max_workers .*runner\.address",
        ),
        ({"kind": "dask", "adress": "tcp://127.0.0.1:8786"}, r"unknown key 'runner\.adress'"),
        ({"kind": "spark"}, r"runner\.kind: Input should be 'thread', 'dask' or 'ray'"),
        ({"kind": "dask", "max_workers": 0}, r"runner\.max_workers: Input should be greater"),
        ({"kind": "dask", "address": ""}, r"runner\.address: String should have at least"),
    ],
)
def test_bad_runner_config_names_the_fields(tmp_path, runner, message):
    with pytest.raises(ConfigError, match=message):
        _runner(tmp_path, runner)


def test_dask_runner_starts_a_loopback_cluster_of_single_threaded_processes(tmp_path):
    from prefect_dask import DaskTaskRunner

    local = build_task_runner(_runner(tmp_path, {"kind": "dask", "max_workers": 3}))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {
        "n_workers": 3,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        "scheduler_kwargs": {"dashboard": False},
    }
    remote = build_task_runner(_runner(tmp_path, {"kind": "dask", "address": "tcp://h:8786"}))
    assert remote.address == "tcp://h:8786" and not remote.cluster_kwargs


def test_workers_of_a_flow_on_a_temporary_server_report_to_it(monkeypatch):
    """Without a configured API the flow runs on a temporary server; the URL that task runs
    carry to worker processes must be that server's, or each worker would start its own."""
    import prefect.server.api.server as server_module
    from prefect.context import serialize_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class RunningServer:  # stands for the flow's temporary server (a real one takes ~20 s)
        api_url = "http://127.0.0.1:8123/api"

        def start(self) -> None:
            pass

    monkeypatch.setattr(server_module, "SubprocessASGIServer", RunningServer)
    runner = build_task_runner(RunnerConfig(kind="dask", address="tcp://127.0.0.1:8786"))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert not PREFECT_API_URL.value()
        with runner.duplicate():  # as the flow engine opens it; connects on first submit
            sent = serialize_context()["settings_context"]["settings"]
            assert sent["api"]["url"] == RunningServer.api_url
        assert not PREFECT_API_URL.value()
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}), runner.duplicate():
        assert PREFECT_API_URL.value() == "http://127.0.0.1:4200/api"  # a configured API wins


def test_ray_runner_needs_the_ray_extra_or_starts_ray_with_max_workers_cpus(tmp_path):
    runner = _runner(tmp_path, {"kind": "ray", "max_workers": 2})
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
            build_task_runner(runner)
        return
    task_runner = build_task_runner(runner)
    assert task_runner.address is None
    assert task_runner.init_kwargs["num_cpus"] == 2
    assert task_runner.init_kwargs["include_dashboard"] is False


# --------------------------------------------------------------------------------------------
# the same tiny selection on every runner (end to end)


def _second_candidate(models_dir: Path, dest: Path) -> str:
    """tiny-llama's architecture and tokenizer with another init seed: a different model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from tasks.models import resolve_candidate

    base = resolve_candidate("tiny-llama", cache_dir=models_dir)
    config = AutoModelForCausalLM.from_pretrained(base).config
    torch.manual_seed(1234)
    LlamaForCausalLM(config).save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(dest)
    return str(dest)


def _probe_results(cache_dir: Path) -> list[ProbeResult]:
    """Every persisted probe result (one file per probe: nothing came from a shared cache)."""
    from prefect.results import ResultRecord

    records = [ResultRecord.deserialize(p.read_bytes()) for p in (cache_dir / "results").iterdir()]
    return [r.result for r in records if isinstance(r.result, ProbeResult)]


def _probe_states(flow_run_id: str, expected: int, timeout: float = 60.0) -> list[str]:
    """Final states of the flow run's probe task runs, as the flow's Prefect API has them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [
                r for r in client.read_task_runs(flow_run_filter=flt) if r.name.startswith("probe ")
            ]
            states = [r.state.name for r in runs if r.state is not None and r.state.is_final()]
            if len(states) >= expected or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def _test_losses(uri: str, run_id: str) -> dict[tuple[str, int], float]:
    """``test_loss`` per (candidate, subset size), as logged on the nested MLflow runs."""
    client = Tracker(uri).client
    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'",
    )
    return {
        (child.data.tags[T.CANDIDATE], m.step): m.value
        for child in children
        for m in client.get_metric_history(child.info.run_id, "test_loss")
    }


def _select(tmp: Path, label: str, candidates: list[str], runner: dict | None) -> dict:
    """The tiny selection with ``runner`` (None: the default), in its own cache and MLflow.

    Its own cache folder matters: ``threads`` is not in the probe cache key, so runners sharing
    one cache would take each other's probes instead of computing them (each run's probe states
    are checked to be Completed, none Cached).
    """
    from flows.select import flow_with_runner

    root = tmp / label
    root.mkdir()
    data = {
        **BASE,
        "candidates": candidates,
        "cache_dir": str(root / "cache"),
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "runners"},
    }
    if runner is not None:
        data["runner"] = runner
    path = _write(root, data)
    start = time.perf_counter()
    state = flow_with_runner(load_config(path))(config_path=path, return_state=True)
    seconds = time.perf_counter() - start
    summary = state.result()
    results = _probe_results(root / "cache")
    # the ladder's probes ran on the runner; the winner's training at the target ran in the
    # train-at-target subflow (its own thread pool, in the flow's process)
    probes = [p for p in results if p.size != BASE["target_size"]]
    return {
        "summary": summary,
        "seconds": seconds,
        # the selection flow's own probe tasks: the ladder (the target's is in the subflow)
        "probe_states": _probe_states(
            str(state.state_details.flow_run_id),
            len(probes),
        ),
        "losses": _test_losses(summary.tracking_uri, summary.run_id),
        "workers": {p.worker for p in probes},
        "threads": {p.threads for p in probes},
        "target_workers": {p.worker for p in results if p.size == BASE["target_size"]},
        "n_probes": len(results),
    }


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


@pytest.fixture(scope="module")
def selections(prefect_harness, tmp_path_factory):
    """One tiny selection per runner: the default thread pool, a local Dask cluster of two
    workers, and an existing two-worker Dask cluster given by ``runner.address``."""
    import distributed

    tmp = tmp_path_factory.mktemp("runners")
    candidates = ["tiny-llama", _second_candidate(tmp / "models", tmp / "tiny-llama-seed1234")]
    out = {
        "candidates": candidates,
        "thread": _select(tmp, "thread", candidates, None),
        "dask": _select(tmp, "dask", candidates, {"kind": "dask", "max_workers": 2}),
    }
    # The existing cluster is started the way the dask runner starts its own.
    local = build_task_runner(RunnerConfig(kind="dask", max_workers=2))
    with (
        distributed.LocalCluster(**local.cluster_kwargs) as cluster,
        distributed.Client(cluster) as client,
    ):
        worker_pids = set(client.run(os.getpid).values())
        out["listening"] = _listening(worker_pids | {os.getpid()})
        out["address"] = cluster.scheduler_address
        out["dask-address"] = _select(
            tmp, "dask-address", candidates, {"kind": "dask", "address": cluster.scheduler_address}
        )
        out["cluster_worker_pids"] = worker_pids
    base = out["thread"]["losses"]
    for label in ("thread", "dask", "dask-address"):
        sel = out[label]
        diff = max(abs(sel["losses"][k] - base[k]) for k in base)
        print(
            f"\n{label:>12}: {sel['seconds']:.1f} s, {sel['n_probes']} probes in "
            f"{len(sel['workers'])} process(es), torch threads {sorted(sel['threads'])}, "
            f"max |test_loss - thread| {diff:.3g}"
        )
    return out


def _same_selection(sel: dict, base: dict) -> None:
    assert sel["summary"].selected == base["summary"].selected
    ranking = [(r["candidate"], r["predicted_loss"]) for r in sel["summary"].result.ranking_rows()]
    expected = [
        (r["candidate"], r["predicted_loss"]) for r in base["summary"].result.ranking_rows()
    ]
    assert [c for c, _ in ranking] == [c for c, _ in expected]
    for (_, loss), (_, want) in zip(ranking, expected, strict=True):
        assert math.isclose(loss, want, rel_tol=LOSS_RTOL), (ranking, expected)
    assert sel["losses"].keys() == base["losses"].keys()
    # the workers reported every ladder probe to the flow's Prefect API, none came from a cache
    # (the winner's training at the target is reported by the train-at-target subflow)
    ladder = [key for key in base["losses"] if key[1] != BASE["target_size"]]
    assert sel["probe_states"] == ["Completed"] * len(ladder), sel["probe_states"]
    for key, want in base["losses"].items():
        assert math.isclose(sel["losses"][key], want, rel_tol=LOSS_RTOL), key


@pytest.mark.integration
@pytest.mark.slow
def test_thread_runner_probes_every_candidate_in_the_flow_process(selections):
    sel = selections["thread"]
    assert sel["summary"].selected in selections["candidates"]
    ladder = {(c, size) for c in selections["candidates"] for size in LADDER}
    # the winner trained at the target: the same probe task, in the train-at-target subflow
    expected = ladder | {(sel["summary"].selected, BASE["target_size"])}
    assert set(sel["losses"]) == expected and sel["n_probes"] == len(expected)
    assert sel["probe_states"] == ["Completed"] * len(ladder)  # the selection flow's own
    assert sel["workers"] == sel["target_workers"] == {f"{socket.gethostname()}:{os.getpid()}"}


@pytest.mark.integration
@pytest.mark.slow
def test_local_dask_cluster_fans_probes_out_with_the_same_results(selections):
    sel, base = selections["dask"], selections["thread"]
    _same_selection(sel, base)
    assert sel["n_probes"] == base["n_probes"]
    # two worker processes shared the probes, none ran in the flow's process
    assert len(sel["workers"]) == 2
    assert not sel["workers"] & base["workers"]
    assert sel["threads"] == {probe_threads(RunnerConfig(kind="dask", max_workers=2))}
    assert sel["target_workers"] == base["workers"]  # the train-at-target subflow's own pool


@pytest.mark.integration
@pytest.mark.slow
def test_existing_dask_cluster_by_address_runs_the_probes(selections):
    sel = selections["dask-address"]
    _same_selection(sel, selections["thread"])
    ran_on = {int(w.rsplit(":", 1)[1]) for w in sel["workers"]}
    assert ran_on == selections["cluster_worker_pids"]  # both of the cluster's workers
    assert sel["threads"] == {1}


@pytest.mark.integration
@pytest.mark.slow
def test_dask_cluster_listens_on_loopback_only_on_free_ports(selections):
    assert selections["address"].startswith("tcp://127.0.0.1:")
    listening = selections["listening"]
    assert listening and {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    assert 8787 not in {port for _, port in listening}  # no fixed dashboard port to collide on


@pytest.mark.integration
@pytest.mark.slow
def test_ray_runner_gives_the_same_selection(selections, tmp_path):
    pytest.importorskip("prefect_ray", reason="Ray is optional: pip install -e '.[ray]'")
    sel = _select(tmp_path, "ray", selections["candidates"], {"kind": "ray", "max_workers": 2})
    print(f"\n         ray: {sel['seconds']:.1f} s, {len(sel['workers'])} process(es)")
    _same_selection(sel, selections["thread"])
    assert len(sel["workers"]) == 2 and not sel["workers"] & selections["thread"]["workers"]
