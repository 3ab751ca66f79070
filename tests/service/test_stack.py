"""The production stack end to end: SeaweedFS S3 + MLflow server + Prefect server + a worker,
on each database backend: SQLite and the stack's own PostgreSQL (every test runs on both).

Starts the stack in a temporary root on free ports, registers the deployments, runs the
selection deployment (configs/tiny.yaml) through a process worker, and checks what an operator
would: runs in the MLflow server, artifacts as S3 objects, a champion that loads through the
server's proxied artifact store, S3 rejecting wrong keys, loopback-only listeners, a working
rollback, and everything still there after ``stack down`` + ``stack up``. Prefect's persisted
probe results are local files and identical S3 objects (write-through), a re-run after the
restart with the local copies deleted takes every probe from S3, and the S3 keys appear nowhere
(MLflow, bucket objects, Prefect API, logs, files) but in the stack's credentials files; the
PostgreSQL password likewise appears nowhere but in ``postgres.json``. On PostgreSQL the runs
and flow runs are rows of its databases, no SQLite file is written, the server listens on
127.0.0.1 only, and another stack can use it as an existing server (``db_url``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from infra import deploy as deploy_mod
from infra import postgres, stack
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.model_registry import ModelRegistry
from tasks.tracking.models import load_transformers_components

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_NAME = "lensllm-tiny"  # configs/tiny.yaml registry.model_name
EXPERIMENT = "lensllm-tiny"
RUN_TIMEOUT_S = 360


def _stop_worker(proc: subprocess.Popen) -> None:
    """A Prefect worker shuts down on SIGINT; SIGKILL its group if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _run_selection(root: Path, overrides: list[str], log_path: Path):
    """Run the selection deployment through a fresh worker; ``(flow_run, seconds, worker log)``."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cmd, wenv, cwd = deploy_mod.worker_command(root)
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            cmd, env=wenv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            begin = time.perf_counter()
            with temporary_settings({PREFECT_API_URL: wenv["PREFECT_API_URL"]}):
                flow_run = run_deployment(
                    "select-model/weekly-selection",
                    parameters={"config_path": "configs/tiny.yaml", "overrides": overrides},
                    timeout=RUN_TIMEOUT_S,
                )
            seconds = time.perf_counter() - begin
        finally:
            _stop_worker(worker)
    log_text = log_path.read_text(errors="replace")
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        f"flow run ended {flow_run.state!r} after {seconds:.0f} s; worker log:\n" + log_text[-6000:]
    )
    return flow_run, seconds, log_text


def _probe_states(api_url: str, flow_run_id, expected: int = 8, timeout: float = 60) -> list[str]:
    """State names of the probe task runs of one flow run, once the server has them all final
    (task run states arrive as events, a little after the flow run's own state)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            while True:
                runs = [
                    r
                    for r in client.read_task_runs(flow_run_filter=flt)
                    if r.name.startswith("probe ")
                ]
                final = all(r.state is not None and r.state.is_final() for r in runs)
                if (len(runs) >= expected and final) or time.monotonic() > deadline:
                    return sorted(r.state.name if r.state else "None" for r in runs)
                time.sleep(0.5)


def _second_candidate(tmp: Path) -> str:
    from tests.pipeline.test_select_flow import _second_candidate as make

    return make(tmp / "cache" / "models", tmp / "tiny-llama-seed1234")


def _stack_folder(db: str, tmp: Path) -> Path:
    """A folder for the stack root. The PostgreSQL server runs as the ``postgres`` account when
    the tests run as root, and pytest's own folders (mode 0700) would not let it through."""
    if db == "postgres" and os.geteuid() == 0:
        folder = Path(tempfile.mkdtemp(prefix="lensllm-stack-test-"))
        os.chmod(folder, 0o711)  # enter, not list
        return folder
    return tmp


def _memory_line(root: Path) -> str:
    rss, pss = stack.rss_bytes(root), stack.rss_bytes(root, pss=True)
    return (
        f"resident {sum(rss.values()) / 2**20:.0f} MiB (PSS {sum(pss.values()) / 2**20:.0f}): "
        + (", ".join(f"{k} {rss[k] / 2**20:.0f} MiB (PSS {pss[k] / 2**20:.0f})" for k in rss))
    )


@pytest.fixture(scope="module", params=stack.BACKENDS)
def deployed(request, tmp_path_factory):
    """Stack up on one backend, deployments registered, the tiny selection run by a worker;
    torn down after."""
    db = request.param
    tmp = tmp_path_factory.mktemp(f"stack-{db}")
    folder = _stack_folder(db, tmp)
    root = folder / "stack"
    ports = {name: stack.free_port() for name in stack.services_of({"db": db})}
    try:
        started = stack.up(root, ports=ports, timeout=240, db=db)
        print(f"\n[{db}] stack up: healthy after {started['seconds']:.1f} s; {_memory_line(root)}")
        env = stack.stack_env(root)
        deployed_info = deploy_mod.deploy(root)
        other = _second_candidate(tmp)
        overrides = [
            f"candidates=[tiny-llama, {other}]",
            f"cache_dir={tmp / 'cache'}",
            f"tracking.uri={env['MLFLOW_TRACKING_URI']}",
        ]
        flow_run, run_s, log_text = _run_selection(root, overrides, tmp / "worker.log")
        print(f"[{db}] selection deployment: COMPLETED in {run_s:.1f} s through the worker")
        yield {
            "db": db,
            "root": root,
            "folders": sorted({tmp, folder}),
            "tmp": tmp,
            "env": env,
            "uri": env["MLFLOW_TRACKING_URI"],
            "ports": ports,
            "deployed": deployed_info,
            "flow_run": flow_run,
            "overrides": overrides,
            "worker_log": log_text,
            "up_seconds": started["seconds"],
        }
    finally:
        stack.down(root)
        if folder != tmp:
            shutil.rmtree(folder, ignore_errors=True)


def _selection_runs(client, uri: str):
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"experiment {EXPERIMENT!r} missing on {uri}"
    return client.search_runs([exp.experiment_id])


def _objects(root: Path, prefix: str = "mlflow/") -> list[str]:
    client = stack.s3_client(root)
    keys, token = [], None
    while True:
        kwargs = {"Bucket": stack.BUCKET, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        page = client.list_objects_v2(**kwargs)
        keys += [o["Key"] for o in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not token:
            return keys


def test_deployments_registered_on_the_pool(deployed):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    assert set(deployed["deployed"]["deployments"]) == set(deploy_mod.DEPLOYMENTS)
    with temporary_settings({PREFECT_API_URL: deployed["env"]["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name("select-model/weekly-selection")
    assert dep.work_pool_name == deploy_mod.POOL
    assert dep.parameters["config_path"] == "configs/demo.yaml"
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * 1"]
    step = dep.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
    assert Path(step["directory"]) == stack.PROJECT_ROOT


def test_mlflow_server_lists_the_runs(deployed):
    client = Tracker(deployed["uri"]).client
    runs = _selection_runs(client, deployed["uri"])
    kinds = sorted(r.data.tags.get(T.RUN_KIND, "") for r in runs)
    assert kinds.count("selection") == 1 and kinds.count("candidate") == 2, kinds
    assert all(r.info.status == "FINISHED" for r in runs)
    # the server stores artifacts through its proxy (clients hold no S3 keys)
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)


def test_artifacts_are_objects_in_the_bucket(deployed):
    keys = _objects(deployed["root"])
    names = {k.rsplit("/", 1)[-1] for k in keys}
    assert {"ranking.json", "fit_params.json", "curves.png", "resolved.yaml"} <= names, names
    assert any(k.endswith(".safetensors") for k in keys), "registered model weights not in S3"


def test_champion_loads_through_the_server(deployed, monkeypatch):
    from transformers import AutoModelForCausalLM

    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)  # proof that the client needs no S3 credentials
    tracker = Tracker(deployed["uri"])
    comps = load_transformers_components(tracker, f"models:/{MODEL_NAME}@champion")
    tokens = comps["tokenizer"]("rope: a strong line", return_tensors="pt")["input_ids"]
    # the worker saved the fine-tuned models it trained (the winner at the target among them)
    finetuned = deployed["tmp"] / "cache" / "finetuned"
    folders = sorted({p.parent for p in finetuned.glob("*/*.safetensors")})
    assert folders, f"no fine-tuned model saved under {finetuned}"
    with torch.no_grad():
        served = comps["model"].eval()(input_ids=tokens).logits
        same = [
            folder
            for folder in folders
            if torch.allclose(
                AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
                .eval()(input_ids=tokens)
                .logits,
                served,
            )
        ]
    assert len(same) == 1, f"the champion served through S3 matches {same} of {folders}"


def test_s3_rejects_wrong_credentials(deployed):
    from botocore.exceptions import ClientError

    root = deployed["root"]
    good = stack.credentials(root)
    for keys in (
        {"access_key": good["access_key"], "secret_key": good["secret_key"] + "x"},
        {"access_key": "LLNOSUCHKEY", "secret_key": good["secret_key"]},
    ):
        with pytest.raises(ClientError) as err:
            stack.s3_client(root, **keys).list_objects_v2(Bucket=stack.BUCKET)
        resp = err.value.response
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert resp["Error"]["Code"] in {"SignatureDoesNotMatch", "InvalidAccessKeyId"}


def _secrets(deployed) -> dict[str, str]:
    """The stack's secrets by name: the S3 keys and, on PostgreSQL, the database password."""
    creds = stack.credentials(deployed["root"])
    found = {"S3 access key": creds["access_key"], "S3 secret key": creds["secret_key"]}
    if deployed["db"] == "postgres":
        found["PostgreSQL password"] = postgres.password(deployed["root"])
    return found


def test_credentials_are_private_and_never_logged(deployed):
    root = deployed["root"]
    private = ["credentials.json", "s3.json"]
    if deployed["db"] == "postgres":
        private.append("postgres.json")
    for name in private:
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
    logs = {p.name: p.read_text(errors="replace") for p in (root / "logs").glob("*.log")}
    assert set(logs) == {f"{s}.log" for s in stack.services_of(stack.load_config(root))}
    for name, secret in _secrets(deployed).items():
        if name != "S3 access key":  # an access key id is not a secret (it names the identity)
            assert all(secret not in text for text in [*logs.values(), deployed["worker_log"]])
    # nor on a command line, which every user of the machine may read
    secrets = _secrets(deployed).values()
    for argv in _command_lines(root):
        assert not any(secret in arg for arg in argv for secret in secrets)


def _command_lines(root) -> list[list[str]]:
    """The command line of every process of the stack still running when it is read: a
    PostgreSQL backend or a worker's child may exit between the listing and the read."""
    import psutil

    lines = []
    for group in stack.processes(root).values():
        for proc in group:
            try:
                lines.append(proc.cmdline())
            except psutil.NoSuchProcess:
                continue
    assert lines, "no process of the stack is running"
    return lines


def test_only_loopback_listens(deployed):
    import psutil

    procs = [p for group in stack.processes(deployed["root"]).values() for p in group]
    pids = {p.pid for p in procs}
    assert set(stack.processes(deployed["root"])) == set(deployed["ports"])
    listening = [
        c for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.pid in pids
    ]
    addresses = {(c.laddr.ip, c.laddr.port) for c in listening}
    assert {p for _, p in addresses} >= set(deployed["ports"].values())
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}, addresses
    print(f"\n[{deployed['db']}] after a run: {_memory_line(deployed['root'])}")


def test_port_taken_is_a_clear_error(deployed, tmp_path):
    port = deployed["ports"]["mlflow"]
    with pytest.raises(stack.StackError, match=f"port {port} for s3 is already in use"):
        stack.up(tmp_path / "other", ports={"s3": port}, timeout=30)
    assert stack.processes(tmp_path / "other") == {}


def test_registry_rollback_command(deployed, capsys):
    from flows.cli import main
    from tasks.promotion.policy import version_description, version_tags

    uri = deployed["uri"]
    tracker = Tracker(uri)
    client = tracker.client
    registry = ModelRegistry(tracker, MODEL_NAME)
    first = client.get_model_version_by_alias(MODEL_NAME, "champion")
    predicted = float(first.tags[T.PREDICTED_LOSS])
    # the REST API leaves ModelVersion.model_id empty; the run's outputs name the logged model
    model_id = first.model_id or client.get_run(first.run_id).outputs.model_outputs[0].model_id
    # the gate compares measured losses on the champion's test split
    (split,) = [
        k.removeprefix(T.MEASURED_PREFIX) for k in first.tags if k.startswith(T.MEASURED_PREFIX)
    ]
    measured = registry.measurement(first.version, split)
    better = measured.model_copy(update={"example_nll": [x / 2 for x in measured.example_nll]})
    # a challenger measured at half the loss, registered from the same logged model in a run of
    # its own (measurements are kept per run), and promoted
    tags = version_tags(
        task_key=first.tags[T.TASK],
        selection_key="stack-test-challenger",
        predicted_loss=predicted - 0.5,
        interval=[predicted - 0.6, predicted - 0.4],
        selector="manual",
    )
    run_id = tracker.create_run(EXPERIMENT, "stack-test-challenger", {T.RUN_KIND: "register"})
    client.set_terminated(run_id)
    version = registry.register_version(
        model_uri=first.source,
        run_id=run_id,
        model_id=model_id,
        tags=tags,
        description=version_description(tags),
    )
    decision = registry.promote_if_better(version, measurement=better, margin=0)
    assert decision.promote is True
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == version
    assert main(["registry", "rollback", "--name", MODEL_NAME, "--tracking-uri", uri]) == 0
    assert f"to v{first.version}" in capsys.readouterr().out
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == first.version
    # nothing left to roll back to: a clear error, exit status 2
    assert main(["registry", "rollback", "--name", MODEL_NAME, "--tracking-uri", uri]) == 2
    assert "no previous champion recorded" in capsys.readouterr().err


def _query(deployed, database: str, query: str) -> list[tuple]:
    """Rows of ``query`` in one of the stack's databases (SQLite file or PostgreSQL)."""
    root = deployed["root"]
    if deployed["db"] == "sqlite":
        import sqlite3

        files = {
            "mlflow": root / "mlflow" / "mlflow.db",
            "prefect": root / "prefect" / "prefect.db",
        }
        with sqlite3.connect(files[database]) as conn:
            return conn.execute(query).fetchall()
    return _pg_query(root, f"lensllm_{database}", query)


def _pg_query(root: Path, database: str, query: str) -> list[tuple]:
    """Rows of ``query`` in ``database`` of the stack's own PostgreSQL server."""
    import psycopg2

    conn = psycopg2.connect(
        host=stack.HOST,
        port=stack.load_config(root)["ports"]["postgres"],
        user=postgres.ROLE,
        password=postgres.password(root),
        dbname=database,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()
    finally:
        conn.close()


def test_runs_and_flow_runs_are_rows_of_the_chosen_backend(deployed):
    """MLflow's runs and Prefect's flow runs live in the backend the stack was started with;
    the other backend's files do not exist."""
    root, uri = deployed["root"], deployed["uri"]
    run_ids = {r.info.run_id for r in _selection_runs(Tracker(uri).client, uri)}
    assert run_ids <= {row[0] for row in _query(deployed, "mlflow", "SELECT run_uuid FROM runs")}
    flow_runs = {str(row[0]) for row in _query(deployed, "prefect", "SELECT id FROM flow_run")}
    assert str(deployed["flow_run"].id) in flow_runs
    sqlite_files = sorted(root.glob("*/*.db"))
    if deployed["db"] == "postgres":
        assert sqlite_files == [], sqlite_files
        assert stack.load_config(root)["db"] == "postgres"
    else:
        assert len(sqlite_files) == 2 and not (root / "postgres").exists()


def test_status_command_reports_every_server(deployed, capsys):
    from flows.cli import main

    assert main(["stack", "status", "--root", str(deployed["root"])]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    pids = {name: group[0].pid for name, group in stack.processes(deployed["root"]).items()}
    for service, port in deployed["ports"].items():  # postgres too, on PostgreSQL
        name, pid, shown_port, state, memory, unit = lines[service][:6]
        assert (int(pid), int(shown_port), state, unit) == (pids[service], port, "healthy", "MiB")
        assert int(memory) > 0


def test_switching_backend_is_a_clear_error(deployed):
    """An existing stack asked for the other backend refuses, and changes nothing."""
    root = deployed["root"]
    other = "sqlite" if deployed["db"] == "postgres" else "postgres"
    before = (stack.load_config(root), {s: p[0].pid for s, p in stack.processes(root).items()})
    with pytest.raises(
        stack.StackError,
        match=f"cannot switch to .*{'SQLite' if other == 'sqlite' else 'PostgreSQL'}",
    ):
        stack.up(root, db=other)
    after = (stack.load_config(root), {s: p[0].pid for s, p in stack.processes(root).items()})
    assert after == before


def test_everything_survives_restart(deployed, tmp_path):
    root, uri = deployed["root"], deployed["uri"]
    client = Tracker(uri).client
    runs_before = {r.info.run_id for r in _selection_runs(client, uri)}
    versions_before = {v.version for v in client.search_model_versions(f"name = '{MODEL_NAME}'")}
    champion_before = client.get_model_version_by_alias(MODEL_NAME, "champion").version
    objects_before = set(_objects(root))

    assert set(stack.down(root)) == set(deployed["ports"])
    assert stack.processes(root) == {}
    assert not any(stack.port_in_use(p) for p in deployed["ports"].values())
    again = stack.up(root, timeout=240)  # no backend named: the saved one
    assert sorted(again["started"]) == sorted(deployed["ports"])
    assert stack.up(root)["started"] == []  # idempotent: a second up starts nothing
    print(f"\n[{deployed['db']}] restart: healthy after {again['seconds']:.1f} s")

    client = Tracker(uri).client
    assert {r.info.run_id for r in _selection_runs(client, uri)} == runs_before
    assert {v.version for v in client.search_model_versions(f"name = '{MODEL_NAME}'")} == (
        versions_before
    )
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == champion_before
    assert objects_before <= set(_objects(root))
    parent = next(
        r for r in _selection_runs(client, uri) if r.data.tags.get(T.RUN_KIND) == "selection"
    )
    local = client.download_artifacts(parent.info.run_id, "ranking.json", str(tmp_path))
    assert json.loads(Path(local).read_text())  # served from S3 through the restarted server
    assert json.loads((root / "last_up.json").read_text())["seconds_to_healthy"] > 0


def test_probe_results_are_on_local_disk_and_in_the_bucket(deployed):
    """Write-through: every result record is a local file and an identical S3 object."""
    root = deployed["root"]
    folder = f"{deploy_mod.RESULTS_FOLDER}/"
    keys = _objects(root, folder)
    states = _probe_states(deployed["env"]["PREFECT_API_URL"], deployed["flow_run"].id)
    assert len(states) == 8 and set(states) == {"Completed"}, states  # 2 candidates x 4 sizes
    # one result record per probe and per NTK spectrum (plus any other persisted results)
    assert len(keys) >= len(states) + 2, keys
    local = deployed["tmp"] / "cache" / "results"
    files = {p.name: p for p in local.iterdir() if p.is_file()}
    assert set(files) == {k.removeprefix(folder) for k in keys}
    client = stack.s3_client(root)
    for key in keys:
        body = client.get_object(Bucket=stack.BUCKET, Key=key)["Body"].read()
        assert body == files[key.removeprefix(folder)].read_bytes(), key


def test_rerun_after_restart_takes_every_probe_from_s3(deployed):
    """Runs after test_everything_survives_restart (file order): the cache outlives the servers.

    The local result copies are deleted first, as on another worker machine: every hit comes
    from S3, and the records are copied back to local disk.
    """
    root, tmp = deployed["root"], deployed["tmp"]
    stack.up(root, timeout=240)  # idempotent; starts nothing when the restart test left it up
    local = tmp / "cache" / "results"
    shutil.rmtree(local)
    flow_run, seconds, log_text = _run_selection(root, deployed["overrides"], tmp / "worker2.log")
    print(f"\nselection re-run from the S3 cache: COMPLETED in {seconds:.1f} s")
    states = _probe_states(deployed["env"]["PREFECT_API_URL"], flow_run.id)
    assert len(states) == 8 and set(states) == {"Cached"}, states
    assert len(list(local.iterdir())) >= 8, "S3 hits were not copied to local disk"
    assert stack.credentials(root)["secret_key"] not in log_text


def test_a_worker_runs_one_flow_run_at_a_time(deployed):
    """Two selections submitted at once to a default worker (``lensllm worker``) run one after
    the other: each sets torch's threads to every core, so at once they would oversubscribe the
    CPU (``infra.deploy.WORKER_FLOW_RUNS``). They are two selections (Lens and AtS), so the
    selection lock, which orders only runs of one selection, plays no part."""
    if deployed["db"] != "sqlite":
        pytest.skip("the limit is the worker's, whatever the database: checked on sqlite")
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root, tmp = deployed["root"], deployed["tmp"]
    stack.up(root, timeout=240)  # idempotent, as in the tests before
    cmd, wenv, cwd = deploy_mod.worker_command(root)
    assert cmd[cmd.index("--limit") + 1] == "1"
    api = wenv["PREFECT_API_URL"]
    with open(tmp / "worker-limit.log", "wb") as log:
        worker = subprocess.Popen(
            cmd, env=wenv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            with temporary_settings({PREFECT_API_URL: api}):
                ids = [
                    run_deployment(
                        "select-model/weekly-selection",
                        parameters={
                            "config_path": "configs/tiny.yaml",
                            "overrides": [*deployed["overrides"], f"selector={selector}"],
                        },
                        timeout=0,
                    ).id
                    for selector in ("Lens", "AtS")
                ]
                deadline = time.monotonic() + RUN_TIMEOUT_S
                with get_client(sync_client=True) as client:
                    while True:
                        runs = [client.read_flow_run(i) for i in ids]
                        if all(r.state is not None and r.state.is_final() for r in runs):
                            break
                        assert time.monotonic() < deadline, [r.state for r in runs]
                        time.sleep(1)
        finally:
            _stop_worker(worker)
    log_text = (tmp / "worker-limit.log").read_text(errors="replace")
    assert all(r.state.is_completed() for r in runs), log_text[-6000:]
    first, second = sorted(runs, key=lambda r: r.start_time)
    print(
        f"\ntwo selections through one worker: {first.start_time:%H:%M:%S}-"
        f"{first.end_time:%H:%M:%S}, then {second.start_time:%H:%M:%S}-{second.end_time:%H:%M:%S}"
    )
    assert second.start_time >= first.end_time, (first.end_time, second.start_time)


def test_existing_postgres_server(deployed, tmp_path, capsys):
    """``db_url``: a second stack on an existing PostgreSQL server (the first stack's own):
    its MLflow and Prefect use databases ``<prefix>_mlflow`` / ``<prefix>_prefect`` there, it
    starts no database server of its own and ``down`` leaves that server running; the URL's
    password is kept only in its ``postgres.json``."""
    from flows.cli import main

    if deployed["db"] != "postgres":
        pytest.skip("needs a PostgreSQL server: the stack's own (PostgreSQL run) serves as one")
    root = deployed["root"]
    stack.up(root, timeout=240)  # idempotent
    secret = postgres.password(root)
    port = stack.load_config(root)["ports"]["postgres"]
    url = f"postgresql://{postgres.ROLE}:{secret}@{stack.HOST}:{port}/team_b"
    other = tmp_path / "stack"
    try:
        started = stack.up(
            other, ports={s: stack.free_port() for s in stack.SERVICES}, db_url=url, timeout=240
        )
        print(f"\n[existing server] stack up: healthy after {started['seconds']:.1f} s")
        assert sorted(started["started"]) == sorted(stack.SERVICES)
        shown = started["status"]["postgres"]
        assert shown["external"] and shown["healthy"] and shown["pid"] is None
        assert shown["url"] == f"postgresql://{postgres.ROLE}@{stack.HOST}:{port}/team_b"
        assert main(["stack", "status", "--root", str(other)]) == 0
        out = capsys.readouterr().out
        assert "external" in out.split("postgres", 1)[1].splitlines()[0] and secret not in out

        Tracker(stack.urls(other)["mlflow"]).client.create_experiment("team-b-check")
        query = "SELECT name FROM experiments"
        assert ("team-b-check",) in _pg_query(root, "team_b_mlflow", query)
        assert ("team-b-check",) not in _pg_query(root, "lensllm_mlflow", query)
        assert len(_pg_query(root, "team_b_prefect", "SELECT * FROM alembic_version")) == 1

        assert stat.S_IMODE((other / "postgres.json").stat().st_mode) == 0o600
        leaked = [
            p
            for p in other.rglob("*")
            if p.is_file() and p.name != "postgres.json" and secret.encode() in _bytes(p)
        ]
        assert leaked == []
        with pytest.raises(stack.StackError, match="cannot switch to SQLite") as err:
            stack.up(other, db="sqlite")
        assert shown["url"] in str(err.value) and secret not in str(err.value)
    finally:
        stopped = stack.down(other)
    assert set(stopped) == set(stack.SERVICES)  # not the existing server
    assert stack.healthy("postgres", root)


# --------------------------------------------------------------------------------------------
# Secrets: searched everywhere the stack and a selection run write to
# --------------------------------------------------------------------------------------------
def _mlflow_places(uri: str, dest: Path):
    """``(where, bytes)`` for every experiment, run, registered model and run artifact."""
    from mlflow.entities import ViewType

    client = Tracker(uri).client
    experiments = client.search_experiments(view_type=ViewType.ALL)
    for exp in experiments:
        yield f"mlflow experiment {exp.name}", json.dumps([exp.name, exp.tags]).encode()
    runs = client.search_runs(
        [e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=5000
    )
    for run in runs:
        where = f"mlflow run {run.info.run_id}"
        yield f"{where} params/tags", json.dumps([run.data.params, run.data.tags]).encode()
        folder = Path(client.download_artifacts(run.info.run_id, "", str(dest / run.info.run_id)))
        for path in (p for p in folder.rglob("*") if p.is_file()):
            yield f"{where} artifact {path.relative_to(folder)}", path.read_bytes()
    for model in client.search_registered_models():
        yield f"mlflow model {model.name}", json.dumps([model.description, model.tags]).encode()
        for v in client.search_model_versions(f"name = '{model.name}'"):
            text = json.dumps([v.description, v.tags, v.source, v.run_link])
            yield f"mlflow model {model.name} v{v.version}", text.encode()


def _bucket_places(root: Path):
    """Every object in the stack's bucket: MLflow artifacts, models, Prefect result records."""
    client = stack.s3_client(root)
    for key in _objects(root, ""):
        yield (
            f"s3://{stack.BUCKET}/{key}",
            client.get_object(Bucket=stack.BUCKET, Key=key)["Body"].read(),
        )


def _prefect_places(api_url: str):
    """Logs (flow runs, task runs, workers), runs, artifacts, deployments, variables and block
    documents as the API serves them by default (secrets obfuscated)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def pages(read):
        offset = 0
        while batch := read(offset):
            yield from batch
            offset += len(batch)

    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            for log in pages(lambda o: client.read_logs(limit=200, offset=o)):
                run = log.task_run_id or log.flow_run_id or log.worker_id
                yield f"prefect log {log.name} {run}", log.message.encode()
            groups = {
                "flow runs": pages(lambda o: client.read_flow_runs(limit=200, offset=o)),
                "task runs": pages(lambda o: client.read_task_runs(limit=200, offset=o)),
                "artifacts": client.read_artifacts(),
                "deployments": client.read_deployments(),
                "variables": client.read_variables(),
                "block documents": client.read_block_documents(include_secrets=False),
            }
            for name, objects in groups.items():
                for obj in objects:
                    yield f"prefect {name} {getattr(obj, 'id', '')}", obj.model_dump_json().encode()


def _bytes(path: Path) -> bytes:
    """A file's bytes, or none if it is gone. The servers are running: a file they remove
    between a listing and the read (PostgreSQL's ``pg_internal.init``, a temporary file)
    holds nothing any more."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _file_places(folders: list[Path], excluded: set[Path]):
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.resolve() not in excluded:
                yield str(path), _bytes(path)


def _config_places():
    """Files tracked by git and the project's Prefect home (``.prefect``)."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=stack.PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        path = stack.PROJECT_ROOT / name
        if path.is_file():
            yield f"git {name}", path.read_bytes()
    yield from _file_places([stack.PROJECT_ROOT / ".prefect"], set())


def _search(deployed, needles: list[str], dest: Path) -> dict[str, set[str]]:
    """``{place: needles found there}`` over every place the stack stores data (all searched)."""
    root = deployed["root"]
    # the only files meant to hold secrets: credentials.json and SeaweedFS's identity file (S3
    # keys), postgres.json (the database password)
    excluded = {
        (root / name).resolve() for name in ("credentials.json", "s3.json", "postgres.json")
    }
    places = [
        _mlflow_places(deployed["uri"], dest),
        _bucket_places(root),
        _prefect_places(deployed["env"]["PREFECT_API_URL"]),
        # stack root: logs, run, data (SQLite files or the PostgreSQL cluster); worker logs
        _file_places(deployed["folders"], excluded),
        _config_places(),
    ]
    found = {}
    for source in places:
        for where, data in source:
            found[where] = {n for n in needles if n.encode() in data}
    return found


def test_secrets_appear_nowhere_but_the_credentials_files(deployed, tmp_path):
    """Runs last: after the restart and the re-run, so their logs and records are searched too.

    Searched: MLflow experiments, runs (params, tags, every artifact), registered models and
    versions; every object in the bucket (artifacts, models, Prefect result records); Prefect
    logs (flow runs, task runs, workers), runs, artifacts, deployments, variables and block
    documents; every file under the test folders (stack root with logs, pid files, SQLite
    databases or the PostgreSQL cluster's files, SeaweedFS data; worker logs; local result
    cache); git-tracked files and ``.prefect``. Not searched: ``credentials.json``, SeaweedFS's
    ``s3.json`` and ``postgres.json``, the files meant to hold them. Searched for: the S3 keys
    and, on PostgreSQL, the database password. A canary string planted where a leak would land
    (an MLflow tag, a Prefect log line, an S3 object, a stack log file) must be found, so the
    search is known to look in those places, the MLflow database's files among them.
    """
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root, uri = deployed["root"], deployed["uri"]
    secrets_ = _secrets(deployed)
    canary = "canary-" + os.urandom(8).hex()
    client = Tracker(uri).client
    run_id = _selection_runs(client, uri)[0].info.run_id
    client.set_tag(run_id, "leak-canary", canary)
    stack.s3_client(root).put_object(Bucket=stack.BUCKET, Key="canary.txt", Body=canary.encode())
    log = LogCreate(
        name="canary",
        level=20,
        message=canary,
        timestamp=datetime.now(UTC),
        flow_run_id=deployed["flow_run"].id,
    )
    with temporary_settings({PREFECT_API_URL: deployed["env"]["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            client.create_logs([log])
    with open(root / "logs" / "s3.log", "a") as server_log:
        server_log.write(f"{canary}\n")

    found = _search(deployed, [*secrets_.values(), canary], tmp_path)
    canary_at = {where for where, needles in found.items() if canary in needles}
    print(f"\n[{deployed['db']}] secret search: {len(found)} places (runs, objects, logs, files)")
    assert f"mlflow run {run_id} params/tags" in canary_at
    assert f"s3://{stack.BUCKET}/canary.txt" in canary_at
    assert any(where.startswith("prefect log canary") for where in canary_at)
    assert str(root / "logs" / "s3.log") in canary_at
    database_files = str(root / ("postgres" if deployed["db"] == "postgres" else "mlflow"))
    assert any(where.startswith(database_files) for where in canary_at), "database not searched"
    # The Prefect block store is where workers get the S3 keys from (deploy.save_result_storage):
    # it serves the secret key obfuscated; the access key id is a plain AwsCredentials field.
    block_store = {secrets_["S3 access key"], canary}
    leaks = sorted(
        f"{where}: {name}"
        for where, needles in found.items()
        for name, secret in secrets_.items()
        if secret
        in needles - (block_store if where.startswith("prefect block documents") else {canary})
    )
    assert leaks == [], f"secrets found in: {leaks}"
