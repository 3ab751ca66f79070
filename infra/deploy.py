"""Prefect deployments on the stack: the work pool, ``prefect deploy`` and the process worker."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from infra.stack import (
    BUCKET,
    PROJECT_ROOT,
    REGION,
    StackError,
    _executable,
    credentials,
    stack_env,
    status,
    urls,
)

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

POOL = "lensllm-pool"
PREFECT_FILE = PROJECT_ROOT / "deployments" / "prefect.yaml"
DEPLOYMENTS = (
    "select-model/weekly-selection",
    "register-model/register",
    "replay-benchmark/replay-benchmark",
    "train-at-target/train-at-target",
    "audit-selection/monthly-audit",
)
RESULTS_BLOCK = "lensllm-results"
RESULTS_FOLDER = "prefect-results"
# the slug that ``flows.select`` reads from LENSLLM_RESULT_STORAGE (block type slug / name)
RESULT_STORAGE = f"s3-bucket/{RESULTS_BLOCK}"


def client_env(root: str | os.PathLike | None = None) -> dict[str, str]:
    """This process's environment pointed at the stack (Prefect API, MLflow server), with
    ``LENSLLM_PROJECT_ROOT`` for the deployments' pull step and the offline Hugging Face hub."""
    running = status(root)
    if not running or not all(s["healthy"] for s in running.values()):
        raise StackError("the stack is not running and healthy; start it with `lensllm stack up`")
    env = dict(os.environ)
    env.update(stack_env(root))
    env["LENSLLM_PROJECT_ROOT"] = str(PROJECT_ROOT)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _prefect(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_executable("prefect"), "--no-prompt", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ensure_pool(env: dict[str, str], timeout: float = 120.0) -> bool:
    """Create the process work pool ``lensllm-pool`` if missing; True when it was created."""
    url = env["PREFECT_API_URL"] + f"/work_pools/{POOL}"
    try:
        with urllib.request.urlopen(url, timeout=10):  # noqa: S310 (loopback URL)
            return False
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise StackError(f"Prefect API answered {err.code} for work pool {POOL!r}") from err
    # The CLI fills in the process worker's default job template (the REST API would not).
    done = _prefect(["work-pool", "create", POOL, "--type", "process"], env, timeout)
    if done.returncode != 0:
        raise StackError(f"could not create work pool {POOL!r}:\n{done.stdout}\n{done.stderr}")
    return True


def result_storage_block(root: str | os.PathLike | None = None) -> S3Bucket:
    """The stack's S3 result storage as an (unsaved) ``prefect_aws.S3Bucket`` block.

    Bucket ``lensllm``, folder ``prefect-results``, the stack's S3 keys and the SeaweedFS
    endpoint (SigV4, path-style).
    """
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    creds = credentials(root)
    return S3Bucket(
        bucket_name=BUCKET,
        bucket_folder=RESULTS_FOLDER,
        credentials=AwsCredentials(
            aws_access_key_id=creds["access_key"],
            aws_secret_access_key=creds["secret_key"],
            region_name=REGION,
            aws_client_parameters=AwsClientParameters(
                endpoint_url=urls(root)["s3"],
                config={"signature_version": "s3v4", "s3": {"addressing_style": "path"}},
            ),
        ),
    )


def save_result_storage(root: str | os.PathLike | None = None) -> str:
    """Save the S3 result storage block on the stack's Prefect server; returns its slug.

    An ``S3Bucket`` block named ``lensllm-results`` (:func:`result_storage_block`). The keys
    live only in the server's block store (as secrets); workers load the block by slug, so they
    never see the keys in their environment. Re-running overwrites it. Flows wrap it in
    ``tasks.runtime.result_storage.WriteThroughResultStorage`` (local first, S3 mirrored).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: urls(root)["prefect"]}):
        result_storage_block(root).save(RESULTS_BLOCK, overwrite=True)
    return RESULT_STORAGE


def deploy(root: str | os.PathLike | None = None, *, timeout: float = 600.0) -> dict:
    """Register every deployment of ``deployments/prefect.yaml`` with the stack's Prefect server.

    Also saves the S3 result storage block (:func:`save_result_storage`). Returns
    ``{"pool_created": bool, "result_storage": slug, "deployments": {name: id}}``; raises
    StackError with Prefect's output when ``prefect deploy`` fails.
    """
    env = client_env(root)
    created = ensure_pool(env)
    storage = save_result_storage(root)
    done = _prefect(["deploy", "--all", "--prefect-file", str(PREFECT_FILE)], env, timeout)
    if done.returncode != 0:
        raise StackError(f"`prefect deploy --all` failed:\n{done.stdout[-4000:]}\n{done.stderr}")
    found = {}
    for name in DEPLOYMENTS:
        url = env["PREFECT_API_URL"] + f"/deployments/name/{name}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback URL)
                found[name] = json.loads(resp.read())["id"]
        except urllib.error.HTTPError as err:
            raise StackError(
                f"deployment {name!r} missing after `prefect deploy`:\n{done.stdout[-4000:]}"
            ) from err
    return {"pool_created": created, "result_storage": storage, "deployments": found}


# Flow runs one worker runs at a time. A selection, an audit or a training sets torch's threads
# to every core the process may use (``tasks.training.finetune.configure_cpu``), so two at once
# on one machine run twice as many OpenMP threads as cores, and libgomp then sleeps at every
# barrier instead of spinning (``tasks.runtime.compute_threads``): a scheduled audit falling on
# the weekly selection would slow both many times over, not share the cores. One at a time
# finishes both sooner; more workers on more machines run more at once.
WORKER_FLOW_RUNS = 1


def worker_command(
    root: str | os.PathLike | None = None, *, extra: list[str] | None = None
) -> tuple[list[str], dict[str, str], Path]:
    """``(argv, env, cwd)`` of a process worker on ``lensllm-pool`` pointed at the stack.

    It starts at most ``WORKER_FLOW_RUNS`` flow runs at a time unless ``extra`` sets its own
    ``--limit``. Its flow runs persist task results locally and in the S3 block saved by
    :func:`deploy` (``LENSLLM_RESULT_STORAGE``; see ``tasks.runtime.result_storage``).
    """
    extra = list(extra or [])
    cmd = [_executable("prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
    if not any(a in ("--limit", "-l") or a.startswith("--limit=") for a in extra):
        cmd += ["--limit", str(WORKER_FLOW_RUNS)]
    env = client_env(root)
    env["LENSLLM_RESULT_STORAGE"] = RESULT_STORAGE
    return [*cmd, *extra], env, PROJECT_ROOT
