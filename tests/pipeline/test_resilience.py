"""Crashes, outages and concurrency: nothing finished is lost, recomputed or logged twice.

- tracking: a selection cut off while it logs resumes its MLflow parent run, so every
  candidate keeps exactly one run; a tracking server (or its artifact store) that is down is one
  clear error, exit status 3 from ``lensllm select``;
- registry: the promotion gate's read-then-write holds a lock, so two selections finishing
  at once cannot both promote against the same old champion;
- end to end (slow): ``kill -9`` of ``lensllm select`` while it probes, then the same command:
  no finished probe recomputed, one MLflow run per candidate, and the ranking and registry of
  an uninterrupted run; an MLflow server that dies mid-selection loses nothing and the same
  command logs everything once it is back; two selections of one task at the same time.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tasks.promotion.policy import version_tags
from tasks.records.errors import TrackingUnavailableError
from tasks.records.schema import Measurement, PreparedData, ProbeResult
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.model_registry import ModelRegistry
from tasks.tracking.runs import log_candidate, open_selection_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# --------------------------------------------------------------------------------------------
# Tracking: resume after a crash, unreachable server
# --------------------------------------------------------------------------------------------
def _open(uri: str, key: str = "k1") -> tuple[str, bool]:
    return open_selection_run(
        Tracker(uri),
        "resume",
        "select-x",
        {T.SELECTION_KEY: key, T.CONFIG_HASH: "c"},
        {"selector": "Lens"},
        "name: x\n",
    )


TEST_FINGERPRINT = "t" * 64
DATA = PreparedData(  # what logging a probe reads of the data: its name and source
    source="wordnet",
    train=[],
    val=[],
    test=[],
    sizes=[16],
    fingerprint="f" * 16,
    subset_fingerprints={16: "s" * 64},
    val_fingerprint="v" * 64,
    test_fingerprint=TEST_FINGERPRINT,
    n_available=100,
    n_train_available=68,
)


def _probe(candidate: str, size: int) -> ProbeResult:
    loss = 2.0 - size / 100
    return ProbeResult(
        candidate=candidate,
        size=size,
        train_fingerprint=DATA.subset_fingerprints.get(size),
        test_fingerprint=TEST_FINGERPRINT,
        test_loss=loss * 1.3,
        test_loss_per_byte=loss * 0.69,
        test_bits_per_byte=loss,
        test_tokens=100,
        test_bytes=130,
        forward_params=1000,
        method="lora" if size else "zero-shot",
        learning_rate=2e-3,
        n_train=size,
        n_val=16,
        n_test=16,
        device="cpu",
        dtype="float32",
    )


def _log(tracker: Tracker, parent: str, name: str, sizes: list[int], prediction: dict) -> str:
    probes = [_probe(name, size) for size in sizes]
    return log_candidate(tracker, parent, name, probes, DATA, prediction=prediction, params={})


class _Killed(BaseException):
    """The process dies (``kill -9``): nothing after this point runs, no cleanup either."""


def _killed(*args, **kwargs):
    raise _Killed


def _active_runs(uri: str) -> list:
    client = Tracker(uri).client
    experiment = client.get_experiment_by_name("resume").experiment_id
    return client.search_runs([experiment])


def test_a_crashed_selection_resumes_its_run_and_logs_each_candidate_once(uri):
    tracker = Tracker(uri)
    parent, resumed = _open(uri)
    assert not resumed
    _log(tracker, parent, "a", [0, 16], {"predicted_loss": 1.0})
    # the crash: b's run was created and half logged (the process died before it ended), the
    # parent never ended
    dying = Tracker(uri)
    dying.end_run = _killed
    with pytest.raises(_Killed):
        _log(dying, parent, "b", [0], {})
    client = tracker.client
    cut_off = [r for r in _active_runs(uri) if r.data.tags.get(T.CANDIDATE) == "b"]
    assert [r.info.status for r in cut_off] == ["RUNNING"]  # the crash left b unfinished

    again, resumed = _open(uri)
    assert (again, resumed) == (parent, True)
    assert client.get_run(parent).data.tags[T.RESUMED] == "1"
    a_again = _log(tracker, parent, "a", [0, 16], {})
    _log(tracker, parent, "b", [0, 16], {"predicted_loss": 1.2})
    tracker.end_run(parent)

    runs = _active_runs(uri)
    children = [r for r in runs if r.data.tags.get(T.CANDIDATE)]
    assert sorted(r.data.tags[T.CANDIDATE] for r in children) == ["a", "b"]
    assert all(r.info.status == "FINISHED" for r in runs)
    a_run = next(r for r in children if r.data.tags[T.CANDIDATE] == "a")
    assert a_again == a_run.info.run_id
    history = client.get_metric_history(a_run.info.run_id, "test_bits_per_byte")
    assert sorted(m.step for m in history) == [0, 16]  # logged once, not twice
    b_run = next(r for r in children if r.data.tags[T.CANDIDATE] == "b")
    assert sorted(
        m.step for m in client.get_metric_history(b_run.info.run_id, "test_bits_per_byte")
    ) == [0, 16]


def test_a_finished_selection_is_not_resumed(uri):
    parent, _ = _open(uri)
    Tracker(uri).end_run(parent)
    again, resumed = _open(uri)
    assert not resumed and again != parent
    other, resumed = _open(uri, key="another-selection")
    assert not resumed and other not in (parent, again)


def test_an_unreachable_tracking_server_is_one_clear_error():
    from infra.stack import free_port

    uri = f"http://user:hunter2@127.0.0.1:{free_port()}"
    err = Tracker(uri).unreachable_error(timeout=2)
    assert isinstance(err, TrackingUnavailableError)
    assert err.exit_code == 3  # a server that does not answer, not bad input (2)
    text = str(err)
    assert (
        "is unreachable" in text and "lensllm stack up" in text and "nothing is recomputed" in text
    )
    assert "hunter2" not in text  # credentials in the URI are never printed
    with pytest.raises(TrackingUnavailableError):
        Tracker(uri).check_reachable(timeout=2)
    Tracker("sqlite:///nowhere/mlflow.db").check_reachable()  # local stores are always there


# --------------------------------------------------------------------------------------------
# Registry: concurrent promotions
# --------------------------------------------------------------------------------------------
def _register(uri: str, tmp_path: Path, name: str, predicted: float, key: str) -> str:
    tracker = Tracker(uri)
    client = tracker.client
    run = tracker.create_run("registry", f"register-{key}")
    tracker.log_text(run, "weights", "model/weights.txt")
    tags = version_tags(
        task_key="t",
        selection_key=key,
        predicted_loss=predicted,
        interval=[predicted - 0.1, predicted + 0.1],
        selector="Lens",
        extra={},
    )
    try:
        client.create_registered_model(name)
    except Exception:  # created by the other thread
        pass
    version = client.create_model_version(
        name,
        source=f"{client.get_run(run).info.artifact_uri}/model",
        run_id=run,
        tags={k: str(v) for k, v in tags.items()},
    )
    return str(version.version)


def _measured(loss: float) -> Measurement:
    """``loss`` bits per byte measured on 8 examples of 10 bytes (one shared test split)."""
    return Measurement(
        rank_on="bits_per_byte",
        test_fingerprint="split",
        example_nll=[loss * math.log(2) * 10] * 8,
        example_units=[10] * 8,
        scale=1 / math.log(2),
    )


def _promote_concurrently(uri, name, versions, losses, monkeypatch, lock_dir) -> list[dict]:
    """Both gates read the champion before either writes: the window a real race needs."""
    read = ModelRegistry.alias_version
    barrier = threading.Barrier(len(versions), timeout=30)

    def slow_read(*args, **kwargs):
        found = read(*args, **kwargs)
        try:
            barrier.wait(timeout=2)  # without a lock both arrive; with it, one times out alone
        except threading.BrokenBarrierError:
            pass
        return found

    monkeypatch.setattr(ModelRegistry, "alias_version", slow_read)
    results: dict[str, dict] = {}

    def gate(version: str, delay: float) -> None:
        time.sleep(delay)
        registry = ModelRegistry(Tracker(uri), name)
        results[version] = registry.promote_if_better(
            version, measurement=_measured(losses[version]), margin=0.0, lock_dir=lock_dir
        )

    # the better version starts first, so without a lock the worse one writes last
    threads = [threading.Thread(target=gate, args=(v, 0.3 * i)) for i, v in enumerate(versions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return [results[v] for v in versions]


@pytest.mark.parametrize(
    "locked",
    [
        True,
        pytest.param(False, marks=pytest.mark.xfail(strict=True, reason="the race the lock fixes")),
    ],
)
def test_two_gates_at_once_promote_the_better_version(uri, tmp_path, monkeypatch, locked):
    name = "concurrent"
    better = _register(uri, tmp_path, name, 1.0, "sel-better")
    worse = _register(uri, tmp_path, name, 1.5, "sel-worse")
    lock_dir = str(tmp_path / "locks") if locked else None
    losses = {better: 1.0, worse: 1.5}
    decisions = _promote_concurrently(uri, name, [better, worse], losses, monkeypatch, lock_dir)
    assert ModelRegistry(Tracker(uri), name).alias_version(T.ALIAS_CHAMPION) == better
    assert sum(d.promote for d in decisions) == 1  # one promotion wins
    versions = Tracker(uri).client.search_model_versions(f"name = '{name}'")
    assert sorted(str(v.version) for v in versions) == sorted([better, worse])  # none lost


# --------------------------------------------------------------------------------------------
# End to end: kill -9, MLflow outage, two selections at once (real processes and servers)
# --------------------------------------------------------------------------------------------
def _tiny_config(tmp: Path, other: str, cache: Path, uri: str, **changes) -> str:
    from tests.pipeline.test_select_flow import _config

    data = _config(tmp, ["tiny-llama", other], **changes)
    data["cache_dir"] = str(cache)
    data["tracking"] = {"uri": uri, "experiment": "resilience"}
    data["probe"]["epochs"] = 4  # probes long enough to be killed in the middle
    path = tmp / f"config-{len(list(tmp.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _cli(config: str, tmp: Path, log: Path, core: int | None = None) -> subprocess.Popen:
    """``lensllm select`` in its own process group, with its own Prefect home; with ``core``,
    on that one core (its torch then runs one thread: ``local_cores``)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home")}
    env.pop("PREFECT_API_URL", None)  # an ephemeral Prefect API of its own, as a user gets
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "select", "--config", config],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if core is None else lambda: os.sched_setaffinity(0, {core}),
        )


_PROBE_LINE = re.compile(r"probe (\S+)\s+size\s+(\d+): ")
_PROBE_STATE = re.compile(r"Task run '(?:probe|train) [^']+' - Finished in state (\w+)")


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return log.read_text(errors="replace")


def _selection_state(uri: str, model_name: str) -> dict:
    tracker = Tracker(uri)
    client = tracker.client
    experiment = client.get_experiment_by_name("resilience").experiment_id
    runs = client.search_runs([experiment])
    versions = client.search_model_versions(f"name = '{model_name}'")
    return {
        "selections": [r for r in runs if r.data.tags.get(T.RUN_KIND) == "selection"],
        "candidates": sorted(
            r.data.tags[T.CANDIDATE] for r in runs if r.data.tags.get(T.RUN_KIND) == "candidate"
        ),
        "versions": {
            v.version: (
                v.tags[T.PREDICTED_LOSS],
                v.tags[T.SELECTION_KEY],
                v.source.rsplit("/", 1)[0] != "",
            )
            for v in versions
        },
        "champion": ModelRegistry(tracker, model_name).alias_version(T.ALIAS_CHAMPION),
    }


def _error_line(err: str) -> str:
    """The CLI's one error line (Prefect may log after it, e.g. stopping its server)."""
    lines = [line for line in err.splitlines() if line.startswith("lensllm: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _ranking(log: str) -> list[str]:
    block = log.split("Ranking (", 1)[1].split("Selected:", 1)[0]
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_mid_probing_then_the_same_command_loses_nothing(tmp_path):
    from tests.pipeline.test_select_flow import MODEL_NAME, _second_candidate

    other = _second_candidate(tmp_path / "models", tmp_path / "tiny-llama-seed1234")
    # two candidates x (zero-shot + a 16-32-64 ladder), then the winner trained at the target
    # (the same probe task, in the train-at-target subflow)
    n_probes = 2 * 4 + 1

    # the reference: the same selection, never interrupted
    ref_uri = f"sqlite:///{tmp_path / 'ref.db'}"
    ref_config = _tiny_config(tmp_path, other, tmp_path / "ref-cache", ref_uri)
    ref_log = _wait(_cli(ref_config, tmp_path, tmp_path / "ref.log"), tmp_path / "ref.log")
    assert "Selected:" in ref_log, ref_log[-3000:]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _tiny_config(tmp_path, other, tmp_path / "cache", uri)
    log = tmp_path / "killed.log"
    proc = _cli(config, tmp_path, log)
    deadline = time.monotonic() + 300
    while len(_PROBE_LINE.findall(log.read_text(errors="replace"))) < 3:
        assert proc.poll() is None, "the selection ended before it could be killed"
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, Prefect's server included
    proc.wait(timeout=30)
    finished_before = len(_PROBE_LINE.findall(log.read_text(errors="replace")))
    assert finished_before < n_probes

    start = time.perf_counter()
    resumed_log = _wait(_cli(config, tmp_path, tmp_path / "resumed.log"), tmp_path / "resumed.log")
    recover_s = time.perf_counter() - start
    assert "Selected:" in resumed_log, resumed_log[-3000:]
    states = _PROBE_STATE.findall(resumed_log)
    assert len(states) == n_probes, states
    assert states.count("Cached") >= finished_before, states  # no finished probe recomputed
    print(
        f"\nkill -9 after {finished_before}/{n_probes} probes; the same command finished in "
        f"{recover_s:.1f} s with {states.count('Cached')} probes from cache"
    )

    got, ref = _selection_state(uri, MODEL_NAME), _selection_state(ref_uri, MODEL_NAME)
    assert len(got["selections"]) == 1  # no second parent run ...
    assert got["candidates"] == ref["candidates"]  # ... and one run per candidate
    assert _ranking(resumed_log) == _ranking(ref_log)
    assert [v[0] for v in got["versions"].values()] == [v[0] for v in ref["versions"].values()]
    assert (got["champion"], len(got["versions"])) == (ref["champion"], 1)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The project's servers (``infra.stack``: S3, MLflow, Prefect) on free loopback ports."""
    from infra import stack

    root = tmp_path_factory.mktemp("stack") / "stack"
    ports = {"s3": stack.free_port(), "mlflow": stack.free_port(), "prefect": stack.free_port()}
    stack.up(root, ports=ports, timeout=240)
    try:
        yield {"root": root, "uri": stack.urls(root)["mlflow"]}
    finally:
        stack.down(root)


@pytest.fixture(scope="module")
def prefect_cli(prefect_harness):
    """The Prefect test API for in-process ``lensllm`` commands. Prefect sets up its console
    logging when first imported, on the stderr of that moment: import it here, before a test's
    ``capfd`` swaps stderr for a file that is closed after the test."""
    import prefect.main  # noqa: F401


def _probe_states(flow_run_id: str, n: int) -> list[str]:
    from tests.pipeline.test_select_flow import _probe_task_runs

    return sorted(r.state.name for r in _probe_task_runs(flow_run_id, n))


@pytest.mark.integration
@pytest.mark.slow
def test_mlflow_down_mid_selection_then_the_same_command_logs_everything(
    prefect_cli, mlflow_server, tmp_path, monkeypatch, capfd
):
    from flows import cli
    from infra import stack
    from tests.pipeline.test_select_flow import MODEL_NAME, _run, _second_candidate

    root, uri = mlflow_server["root"], mlflow_server["uri"]
    other = _second_candidate(tmp_path / "models", tmp_path / "tiny-llama-seed1234")
    config = _tiny_config(tmp_path, other, tmp_path / "cache", uri, name="outage")
    stack.down(root)
    # Down at the start: `lensllm select` stops before any probe, one line, exit status 3.
    rc = cli.main(["select", "--config", config])
    _, stderr = capfd.readouterr()
    assert rc == 3, stderr[-3000:]
    line = _error_line(stderr)
    assert "is unreachable" in line and "lensllm stack up" in line and "Traceback" not in stderr
    assert not (tmp_path / "cache" / "results").exists()  # no probe spent

    # The server passes the start check, then dies while the candidates are probed.
    monkeypatch.setattr(Tracker, "check_reachable", lambda *args, **kwargs: None)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast, not after backoff
    state, _ = _run(config)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, TrackingUnavailableError), repr(err)
    assert err.exit_code == 3 and "is unreachable" in str(err)
    assert len(list((tmp_path / "cache" / "results").iterdir())) >= 8  # the probes are kept

    monkeypatch.undo()
    start = time.perf_counter()
    stack.up(root, timeout=240)
    state, flow_run_id = _run(config)
    recover_s = time.perf_counter() - start
    assert state.is_completed(), state
    assert set(_probe_states(flow_run_id, 8)) == {"Cached"}  # nothing recomputed
    print(f"\nMLflow back up and the same command logged everything in {recover_s:.1f} s")
    got = _selection_state(uri, MODEL_NAME)
    assert len(got["selections"]) == 1 and got["selections"][0].info.status == "FINISHED"
    assert len(got["candidates"]) == 2 and len(got["versions"]) == 1
    assert got["champion"] == "1"


@pytest.mark.integration
@pytest.mark.slow
def test_an_mlflow_server_whose_s3_store_is_down_is_one_clear_error(
    prefect_cli, mlflow_server, tmp_path, capfd
):
    from flows import cli
    from infra import stack
    from tests.pipeline.test_select_flow import _second_candidate

    root, uri = mlflow_server["root"], mlflow_server["uri"]
    other = _second_candidate(tmp_path / "models", tmp_path / "tiny-llama-seed1234")
    config = _tiny_config(tmp_path, other, tmp_path / "cache", uri, name="s3-down")
    tracker = Tracker(uri)
    tracker.check_reachable()
    stack._stop(root, "s3", 15.0)  # MLflow itself stays up and healthy
    try:
        start = time.perf_counter()
        with pytest.raises(TrackingUnavailableError, match="its artifact store does not") as info:
            tracker.check_reachable()
        with capfd.disabled():
            print(f"\nartifact store down: reported in {time.perf_counter() - start:.1f} s")
        assert info.value.exit_code == 3
        # `lensllm select` stops there: one line, exit status 3, no probe spent
        rc = cli.main(["select", "--config", config])
        _, stderr = capfd.readouterr()
        assert rc == 3, stderr[-3000:]
        assert "its artifact store does not" in _error_line(stderr)
        assert "Traceback" not in stderr
        assert not (tmp_path / "cache" / "results").exists()
    finally:
        stack.up(root, timeout=240)
    tracker.check_reachable()


@pytest.mark.integration
@pytest.mark.slow
def test_concurrent_selections_of_one_task_keep_the_registry_consistent(mlflow_server, tmp_path):
    from tests.pipeline.test_select_flow import MODEL_NAME, _second_candidate

    uri = mlflow_server["uri"]
    other = _second_candidate(tmp_path / "models", tmp_path / "tiny-llama-seed1234")
    cache = tmp_path / "cache"  # shared, as on one worker machine
    registry = {"model_name": MODEL_NAME + "-concurrent"}
    configs = [
        _tiny_config(tmp_path, other, cache, uri, selector="Lens", registry=registry),
        _tiny_config(tmp_path, other, cache, uri, selector="AtS", registry=registry),
    ]
    configs.append(configs[0])  # the same selection twice: it must wait, not duplicate
    # each selection on a core of its own (in turn), as a runner would give them: two torch
    # processes of one thread per core each would oversubscribe the cores and make the
    # training 10-20x slower (``tasks.runtime.compute_threads``) without changing the test
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for i, config in enumerate(configs):
        home = tmp_path / f"p{i}"
        home.mkdir()
        log = home / "out.log"
        procs.append((_cli(config, home, log, core=cores[i % len(cores)]), log))
    logs = [_wait(proc, log) for proc, log in procs]
    for log in logs:
        assert "Selected:" in log, log[-3000:]
    assert any("waiting for selection" in log for log in logs)

    tracker = Tracker(uri)
    versions = tracker.client.search_model_versions(f"name = '{registry['model_name']}'")
    keys = {v.tags[T.SELECTION_KEY] for v in versions}
    hashes = {v.tags[T.WEIGHTS_SHA256] for v in versions}
    # one version per distinct model, none lost or doubled: Lens and AtS may pick the same
    # winner, whose weights then add no second version (the second selection links to it)
    assert 1 <= len(versions) == len(keys) == len(hashes) <= 2
    for log in logs:
        assert "Registered version" in log or "already registered as version" in log, log[-2000:]
    # the gate decides on measured loss on the shared test split: the champion measured best
    measured = {str(v.version): float(v.tags[T.MEASURED_LOSS]) for v in versions}
    champion = ModelRegistry(tracker, registry["model_name"]).alias_version(T.ALIAS_CHAMPION)
    assert measured[champion] == min(measured.values())  # the gate decided, not the timing
    history = ModelRegistry(tracker, registry["model_name"]).history()
    assert [e["after"] for e in history if e["decision"] == "promoted"][-1] == champion
    reasons = [v.tags.get(T.GATE_REASON) for v in versions]
    assert all(reasons), reasons
