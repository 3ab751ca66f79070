"""Write-through result storage against a real SeaweedFS S3 server (started by ``infra.stack``).

What an operator relies on: a finished probe is on local disk before S3 is touched, another
machine gets it from S3, an S3 outage is one warning and never a lost result, and what was kept
locally reaches the bucket once S3 is back. The Prefect test checks the same through a cached
task, including a cache hit in another process that only has S3.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from infra import deploy, stack
from tasks.records.errors import LensLLMUserError
from tasks.runtime.result_storage import (
    RESULT_STORAGE_ENV,
    WriteThroughResultStorage,
    result_storage,
)

pytestmark = pytest.mark.integration

CALLS_ENV = "LENSLLM_TEST_CALLS"  # file the cached task appends to each time its body runs


@task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def doubled(x: int) -> int:
    with open(os.environ[CALLS_ENV], "a") as calls:
        calls.write(f"{x}\n")
    return 2 * x


@pytest.fixture(scope="module")
def s3_root(tmp_path_factory):
    """A SeaweedFS server alone (no MLflow, no Prefect) on free ports; ~1 s to healthy."""
    root = tmp_path_factory.mktemp("s3") / "stack"
    stack.up(root, ports={"s3": stack.free_port()}, services=("s3",), timeout=60)
    yield root
    stack.down(root)


def _kill_s3(root: Path) -> None:
    """SIGKILL the weed process group: an S3 crash, not a clean shutdown."""
    import psutil

    procs = stack.processes(root)["s3"]
    os.killpg(procs[0].pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    assert not stack.healthy("s3", root, timeout=1)


def _restart_s3(root: Path) -> None:
    assert stack.up(root, services=("s3",), timeout=60)["started"] == ["s3"]


@pytest.fixture
def s3_down(s3_root):
    """S3 killed for the test body; restarted after it, whatever happened."""
    _kill_s3(s3_root)
    yield s3_root
    if "s3" not in stack.processes(s3_root):
        _restart_s3(s3_root)


def _bucket_block(root: Path):
    """The stack's S3Bucket block with a folder of its own, so tests do not see each other."""
    block = deploy.result_storage_block(root)
    block.bucket_folder = f"results-{uuid.uuid4().hex[:8]}"
    return block


def _storage(root: Path, local: Path, block=None) -> WriteThroughResultStorage:
    return WriteThroughResultStorage(basepath=str(local), remote=block or _bucket_block(root))


def _object(root: Path, storage: WriteThroughResultStorage, name: str) -> bytes | None:
    from botocore.exceptions import ClientError

    key = f"{storage.remote.bucket_folder}/{name}"
    try:
        return stack.s3_client(root).get_object(Bucket=stack.BUCKET, Key=key)["Body"].read()
    except ClientError as err:
        if err.response["Error"]["Code"] in {"NoSuchKey", "404"}:
            return None
        raise


def _outage_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is unreachable" in r.getMessage()]


def test_write_goes_local_then_to_s3(s3_root, tmp_path):
    storage = _storage(s3_root, tmp_path / "results")
    returned = storage.write_path("a1", b"probe a", _sync=True)
    # Prefect passes absolute storage keys (from _resolve_path) back in; both forms work
    storage.write_path(str(tmp_path / "results" / "b2"), b"probe b", _sync=True)
    assert Path(returned) == tmp_path / "results" / "a1"
    assert (tmp_path / "results" / "a1").read_bytes() == b"probe a"
    assert _object(s3_root, storage, "a1") == b"probe a"
    assert _object(s3_root, storage, "b2") == b"probe b"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["a1", "b2"]
    with pytest.raises(ValueError, match="outside the result folder"):
        storage.write_path("../escape", b"x", _sync=True)


def test_read_falls_back_to_s3_and_keeps_a_local_copy(s3_root, tmp_path):
    block = _bucket_block(s3_root)
    first = _storage(s3_root, tmp_path / "machine-1", block)
    first.write_path("a1", b"probe a", _sync=True)
    other = _storage(s3_root, tmp_path / "machine-2", block)  # another worker machine
    assert other.read_path("a1", _sync=True) == b"probe a"
    assert (tmp_path / "machine-2" / "a1").read_bytes() == b"probe a"
    assert other.sync() == 0  # the copy is not uploaded back
    with pytest.raises(FileNotFoundError, match="no result 'missing' locally or in http"):
        other.read_path("missing", _sync=True)


def test_storage_pickles_with_its_s3_mirror(s3_root, tmp_path):
    import cloudpickle

    storage = _storage(s3_root, tmp_path / "results")
    copy = cloudpickle.loads(cloudpickle.dumps(storage))
    copy.write_path("a1", b"from a copy", _sync=True)
    assert _object(s3_root, storage, "a1") == b"from a copy"


def test_outage_keeps_results_locally_and_the_next_write_uploads_them(s3_down, tmp_path, caplog):
    storage = _storage(s3_down, tmp_path / "results")
    caplog.set_level(logging.INFO)
    started = time.perf_counter()
    storage.write_path("a1", b"probe a", _sync=True)  # nothing raises
    storage.write_path("b2", b"probe b", _sync=True)
    with pytest.raises(FileNotFoundError):
        storage.read_path("missing", _sync=True)  # a cache miss, not a crash
    outage_s = time.perf_counter() - started
    assert (tmp_path / "results" / "a1").read_bytes() == b"probe a"
    assert (tmp_path / "results" / "b2").read_bytes() == b"probe b"
    warnings = _outage_warnings(caplog)
    assert len(warnings) == 1, warnings
    endpoint = stack.urls(s3_down)["s3"]
    assert warnings[0].startswith(f"S3 result storage {endpoint} (s3://lensllm/results-")
    assert (
        f"kept locally in {tmp_path / 'results'} and will be uploaded when S3 is back"
        in (warnings[0])
    )
    assert outage_s < 15, f"three operations against a dead S3 took {outage_s:.1f} s"

    restart = time.perf_counter()
    _restart_s3(s3_down)
    healthy_s = time.perf_counter() - restart
    storage.write_path("c3", b"probe c", _sync=True)
    uploaded_s = time.perf_counter() - restart
    assert [_object(s3_down, storage, k) for k in ("a1", "b2", "c3")] == [
        b"probe a",
        b"probe b",
        b"probe c",
    ]
    assert any("is reachable; uploaded 2 result(s)" in r.getMessage() for r in caplog.records)
    print(
        f"\nS3 restart -> pending results in the bucket (next write): {uploaded_s:.2f} s "
        f"({healthy_s:.2f} s of it until S3 was healthy)"
    )


def test_sync_at_the_next_run_uploads_what_an_outage_left_local(s3_down, tmp_path, caplog):
    block = _bucket_block(s3_down)
    _storage(s3_down, tmp_path / "results", block).write_path("a1", b"probe a", _sync=True)
    restart = time.perf_counter()
    _restart_s3(s3_down)
    healthy_s = time.perf_counter() - restart
    fresh = _storage(s3_down, tmp_path / "results", block)  # a new run: no in-process state
    assert fresh.sync() == 1
    uploaded_s = time.perf_counter() - restart
    assert _object(s3_down, fresh, "a1") == b"probe a"
    assert fresh.sync() == 0  # a current copy is left alone, a newer local one replaces it
    later = time.time() + 60
    (tmp_path / "results" / "a1").write_bytes(b"probe A")  # rewritten while S3 was down
    os.utime(tmp_path / "results" / "a1", (later, later))
    assert fresh.sync() == 1 and _object(s3_down, fresh, "a1") == b"probe A"
    print(
        f"\nS3 restart -> pending result in the bucket (sync at next run): {uploaded_s:.2f} s "
        f"({healthy_s:.2f} s of it until S3 was healthy)"
    )


def test_cached_task_survives_an_outage_and_hits_from_s3_elsewhere(
    prefect_harness, s3_root, tmp_path, monkeypatch, caplog
):
    from prefect.settings import PREFECT_API_URL

    block = _bucket_block(s3_root)
    name = f"results-{uuid.uuid4().hex[:8]}"
    block.save(name)
    monkeypatch.setenv(RESULT_STORAGE_ENV, f"s3-bucket/{name}")
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv(CALLS_ENV, str(calls))
    caplog.set_level(logging.INFO)

    _kill_s3(s3_root)
    try:
        storage = result_storage(tmp_path / "cache")  # flow start: one warning, no raise
        first = doubled.with_options(result_storage=storage)(21, return_state=True)
        second = doubled.with_options(result_storage=storage)(21, return_state=True)
    finally:
        _restart_s3(s3_root)
    assert first.is_completed() and first.result() == 42
    assert second.name == "Cached" and second.result() == 42
    assert calls.read_text().split() == ["21"], "the cached body ran again"
    local = list((tmp_path / "cache" / "results").iterdir())
    assert len(local) == 1
    assert len(_outage_warnings(caplog)) == 1, _outage_warnings(caplog)

    result_storage(tmp_path / "cache")  # the next run's start uploads it
    assert _object(s3_root, storage, local[0].name) == local[0].read_bytes()

    # another machine (process, empty local cache) gets a cache hit from S3 alone
    code = (
        "import json, pathlib, sys\n"
        "from tasks.runtime.result_storage import result_storage\n"
        "from tests.pipeline.test_result_storage import doubled\n"
        "state = doubled.with_options(result_storage=result_storage(pathlib.Path(sys.argv[1])))"
        "(21, return_state=True)\n"
        "print(json.dumps({'state': state.name, 'result': state.result()}))\n"
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "elsewhere")],
        cwd=stack.PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"state": "Cached", "result": 42}
    assert calls.read_text().split() == ["21"], "the other process ran the body"
    assert (tmp_path / "elsewhere" / "results" / local[0].name).is_file()


def test_without_the_stack_results_are_a_local_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(RESULT_STORAGE_ENV, raising=False)
    assert result_storage(tmp_path / "cache") == tmp_path / "cache" / "results"


def test_unknown_storage_block_is_a_clear_error(prefect_harness, monkeypatch, tmp_path):
    monkeypatch.setenv(RESULT_STORAGE_ENV, "s3-bucket/no-such-block")
    with pytest.raises(ValueError, match=r"names no S3Bucket block .*run `lensllm deploy`") as info:
        result_storage(tmp_path / "cache")
    # written for the user: `lensllm select` prints it as one line with exit status 2 (a plain
    # ValueError would now be reported as a bug, with its traceback)
    assert isinstance(info.value, LensLLMUserError) and info.value.exit_code == 2
