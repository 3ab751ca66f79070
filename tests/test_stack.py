"""The production stack end to end: SeaweedFS S3 + MLflow server + Prefect server + a worker.

Starts the stack in a temporary root on free ports, registers the deployments, runs the
selection deployment (configs/tiny.yaml) through a process worker, and checks what an operator
would: runs in the MLflow server, artifacts as S3 objects, a champion that loads through the
server's proxied artifact store, S3 rejecting wrong keys, loopback-only listeners, a working
rollback, and everything still there after ``stack down`` + ``stack up``. Prefect's persisted
probe results are local files and identical S3 objects (write-through), a re-run after the
restart with the local copies deleted takes every probe from S3, and the S3 keys appear nowhere
(MLflow, bucket objects, Prefect API, logs, files) but in the stack's credentials files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import torch

from infra import deploy as deploy_mod
from infra import stack
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.models import load_transformers_components
from tasks.tracking.registry import ModelRegistry

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
                    if r.name.startswith("probe-")
                ]
                final = all(r.state is not None and r.state.is_final() for r in runs)
                if (len(runs) >= expected and final) or time.monotonic() > deadline:
                    return sorted(r.state.name if r.state else "None" for r in runs)
                time.sleep(0.5)


def _second_candidate(tmp: Path) -> str:
    from tests.test_select_flow import _second_candidate as make

    return make(tmp / "cache" / "models", tmp / "tiny-llama-seed1234")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Stack up, deployments registered, the tiny selection run by a worker; torn down after."""
    tmp = tmp_path_factory.mktemp("stack")
    root = tmp / "stack"
    ports = {"s3": stack.free_port(), "mlflow": stack.free_port(), "prefect": stack.free_port()}
    try:
        started = stack.up(root, ports=ports, timeout=240)
        rss = stack.rss_bytes(root)
        print(
            f"\nstack up: healthy after {started['seconds']:.1f} s; resident memory "
            f"{sum(rss.values()) / 2**20:.0f} MiB "
            + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in rss.items())
        )
        env = stack.stack_env(root)
        deployed_info = deploy_mod.deploy(root)
        other = _second_candidate(tmp)
        overrides = [
            f"candidates=[tiny-llama, {other}]",
            f"cache_dir={tmp / 'cache'}",
            f"tracking.uri={env['MLFLOW_TRACKING_URI']}",
        ]
        flow_run, run_s, log_text = _run_selection(root, overrides, tmp / "worker.log")
        print(f"selection deployment: COMPLETED in {run_s:.1f} s through the worker")
        yield {
            "root": root,
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


def test_credentials_are_private_and_never_logged(deployed):
    root = deployed["root"]
    for name in ("credentials.json", "s3.json"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600
    secret = stack.credentials(root)["secret_key"]
    logs = [p.read_text(errors="replace") for p in (root / "logs").glob("*.log")]
    assert len(logs) == 3
    assert all(secret not in text for text in [*logs, deployed["worker_log"]])


def test_only_loopback_listens(deployed):
    import psutil

    procs = [p for group in stack.processes(deployed["root"]).values() for p in group]
    pids = {p.pid for p in procs}
    assert len(stack.processes(deployed["root"])) == 3
    listening = [
        c for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.pid in pids
    ]
    addresses = {(c.laddr.ip, c.laddr.port) for c in listening}
    assert {p for _, p in addresses} >= set(deployed["ports"].values())
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}, addresses
    rss = stack.rss_bytes(deployed["root"])
    print(f"\nstack resident memory after a run: {sum(rss.values()) / 2**20:.0f} MiB {rss}")


def test_port_taken_is_a_clear_error(deployed, tmp_path):
    port = deployed["ports"]["mlflow"]
    with pytest.raises(stack.StackError, match=f"port {port} for s3 is already in use"):
        stack.up(tmp_path / "other", ports={"s3": port}, timeout=30)
    assert stack.processes(tmp_path / "other") == {}


def test_registry_rollback_command(deployed, capsys):
    from flows.cli import main
    from tasks.registry import version_description, version_tags

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
    second = {
        "version": version,
        **registry.promote_if_better(version, measurement=better, margin=0),
    }
    assert second["promote"] is True
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == second["version"]
    assert main(["registry", "rollback", "--name", MODEL_NAME, "--tracking-uri", uri]) == 0
    assert f"to v{first.version}" in capsys.readouterr().out
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == first.version
    # nothing left to roll back to: a clear error, exit status 2
    assert main(["registry", "rollback", "--name", MODEL_NAME, "--tracking-uri", uri]) == 2
    assert "no previous champion recorded" in capsys.readouterr().err


def test_everything_survives_restart(deployed, tmp_path):
    root, uri = deployed["root"], deployed["uri"]
    client = Tracker(uri).client
    runs_before = {r.info.run_id for r in _selection_runs(client, uri)}
    versions_before = {v.version for v in client.search_model_versions(f"name = '{MODEL_NAME}'")}
    champion_before = client.get_model_version_by_alias(MODEL_NAME, "champion").version
    objects_before = set(_objects(root))

    assert set(stack.down(root)) == set(stack.SERVICES)
    assert stack.processes(root) == {}
    assert not any(stack.port_in_use(p) for p in deployed["ports"].values())
    again = stack.up(root, timeout=240)
    assert sorted(again["started"]) == sorted(stack.SERVICES)
    assert stack.up(root)["started"] == []  # idempotent: a second up starts nothing
    print(f"\nrestart: healthy after {again['seconds']:.1f} s")

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


def _file_places(folders: list[Path], excluded: set[Path]):
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.resolve() not in excluded:
                yield str(path), path.read_bytes()


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
    # the only files meant to hold the keys: credentials.json and SeaweedFS's identity file
    excluded = {(root / "credentials.json").resolve(), (root / "s3.json").resolve()}
    places = [
        _mlflow_places(deployed["uri"], dest),
        _bucket_places(root),
        _prefect_places(deployed["env"]["PREFECT_API_URL"]),
        _file_places([deployed["tmp"]], excluded),  # stack root: logs, run, data; worker logs
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
    documents; every file under the test folder (stack root with logs, pid files, SQLite
    databases and SeaweedFS data; worker logs; local result cache); git-tracked files and
    ``.prefect``. Not searched: ``credentials.json`` and SeaweedFS's ``s3.json``, the files
    meant to hold the keys. A canary string planted where a leak would land (an MLflow tag, a
    Prefect log line, an S3 object, a stack log file) must be found, so the search is known to
    look in those places.
    """
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root, uri = deployed["root"], deployed["uri"]
    creds = stack.credentials(root)
    secrets_ = [creds["access_key"], creds["secret_key"]]
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

    found = _search(deployed, [*secrets_, canary], tmp_path)
    canary_at = {where for where, needles in found.items() if canary in needles}
    print(f"\nsecret search: {len(found)} places (runs, artifacts, objects, logs, files)")
    assert f"mlflow run {run_id} params/tags" in canary_at
    assert f"s3://{stack.BUCKET}/canary.txt" in canary_at
    assert any(where.startswith("prefect log canary") for where in canary_at)
    assert str(root / "logs" / "s3.log") in canary_at
    # The Prefect block store is where workers get the S3 keys from (deploy.save_result_storage):
    # it serves the secret key obfuscated; the access key id is a plain AwsCredentials field.
    block_store = {creds["access_key"], canary}
    leaks = sorted(
        f"{where}: {'secret key' if creds['secret_key'] in needles else 'access key'}"
        for where, needles in found.items()
        if needles - (block_store if where.startswith("prefect block documents") else {canary})
    )
    assert leaks == [], f"S3 keys found in: {leaks}"
