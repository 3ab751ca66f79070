"""Where Prefect persists probe and NTK results (the cache that makes re-runs free).

Without the stack, results are files under ``cache/results``. On the stack (``lensllm worker``
sets ``LENSLLM_RESULT_STORAGE`` to the S3 block's slug) they are written through: to
``cache/results`` first, so a finished probe is on local disk before anything can fail, then
mirrored to S3, so another worker machine gets cache hits. S3 is best effort: an outage logs
one warning, results stay local, and what S3 lacks is uploaded by the next successful write and
by :meth:`WriteThroughResultStorage.sync` at the start of the next selection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.blocks.core import Block
from prefect.filesystems import WritableFileSystem
from prefect.utilities.asyncutils import run_sync_in_worker_thread
from prefect_aws import S3Bucket
from pydantic import Field

from tasks.records.errors import ConfigError

#: Set by ``lensllm worker`` to the slug of the stack's S3 result storage block.
RESULT_STORAGE_ENV = "LENSLLM_RESULT_STORAGE"
# An unreachable S3 must cost seconds, not botocore's default minutes of retries.
S3_CLIENT_CONFIG = {
    "connect_timeout": 5,
    "read_timeout": 60,
    "retries": {"total_max_attempts": 2, "mode": "standard"},
}
# S3 LastModified has one-second resolution; a local file counts as newer only beyond this.
MTIME_SLACK_S = 2.0

_log = logging.getLogger(__name__)


def result_storage(cache: Path) -> Path | WritableFileSystem:
    """``cache/results``, written through to the S3 block named in ``LENSLLM_RESULT_STORAGE``.

    A Path is plain local storage (Prefect reads a str as a block slug). With the S3 block, the
    storage is saved as a block named after the local folder (Prefect takes only saved blocks
    as ``result_storage``) and synced: results kept locally during an outage are uploaded now,
    and an unreachable S3 is one warning, after which probing proceeds on local storage.
    """
    local = Path(cache) / "results"
    slug = os.environ.get(RESULT_STORAGE_ENV)
    if not slug:
        return local
    try:
        remote = Block.load(slug)
    except ValueError:  # no such block (Prefect's error for a missing or malformed slug)
        remote = None
    if not isinstance(remote, S3Bucket):
        raise ConfigError(
            f"{RESULT_STORAGE_ENV}={slug!r} names no S3Bucket block on the Prefect server; "
            "run `lensllm deploy` (it saves the block) or unset the variable for local results"
        )
    storage = WriteThroughResultStorage(basepath=str(local.expanduser().resolve()), remote=remote)
    digest = hashlib.sha256(storage.basepath.encode()).hexdigest()[:12]
    storage.save(f"lensllm-results-{digest}", overwrite=True)
    storage.sync()
    return storage


@dataclass
class _RemoteState:
    """What one process knows about one S3 location (shared by every storage instance)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    warned: bool = False
    pending: set[str] = field(default_factory=set)


_STATES: dict[tuple[str, str, str], _RemoteState] = {}
_STATES_LOCK = threading.Lock()


def _logger():
    """The run logger inside a flow or task run (shown in the UI), else the module logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return _log


def _reason(err: Exception) -> str:
    """A short cause without URLs or keys: ``EndpointConnectionError``, ``503 SlowDown``."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code", "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        return f"{status} {code}".strip() or type(err).__name__
    return type(err).__name__


def _not_found(err: Exception) -> bool:
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


class WriteThroughResultStorage(WritableFileSystem):
    """Result storage on local disk, mirrored to an S3 bucket on a best-effort basis.

    Writes go to ``basepath`` first, then to ``remote``; reads take the local file, else the S3
    object (copied locally). S3 failures never raise: they log one warning per process and
    outage, and the result is uploaded later. Prefect takes it as ``result_storage`` once saved
    (:func:`result_storage` does that); the nested S3 block is saved by reference, so the keys
    are not copied. Instances pickle (Dask ships them to its workers).
    """

    _block_type_name = "LensLLM Write-Through Result Storage"

    basepath: str = Field(description="Local folder written first and read first.")
    remote: S3Bucket | None = Field(default=None, description="S3 mirror (best effort).")

    # ---------------------------------------------------------------- paths and state
    def _resolve_path(self, path: str | None) -> Path:
        base = Path(self.basepath).expanduser().resolve()
        if path is None or path == "":
            return base
        resolved = Path(path).expanduser()
        resolved = (resolved if resolved.is_absolute() else base / resolved).resolve()
        if base not in resolved.parents:
            raise ValueError(f"result path {resolved} is outside the result folder {base}")
        return resolved

    def _relative(self, path: str) -> str:
        return self._resolve_path(path).relative_to(self._resolve_path(None)).as_posix()

    def _key(self, relative: str) -> str:
        folder = (self.remote.bucket_folder or "").strip("/")
        return f"{folder}/{relative}" if folder else relative

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (or ``AWS S3``), for messages."""
        params = self.remote.credentials.aws_client_parameters if self.remote else None
        return (params.endpoint_url if params else None) or "AWS S3"

    def _location(self) -> str:
        folder = (self.remote.bucket_folder or "").strip("/")
        return f"{self.endpoint} (s3://{self.remote.bucket_name}/{folder})"

    def _state(self) -> _RemoteState:
        ident = (self.endpoint, self.remote.bucket_name, self.remote.bucket_folder or "")
        with _STATES_LOCK:
            return _STATES.setdefault(ident, _RemoteState())

    def _client(self):
        """A cached boto3 S3 client with short timeouts (prefect-aws caches by credentials)."""
        creds = self.remote.credentials
        params = creds.aws_client_parameters
        config = {**(params.config or {}), **S3_CLIENT_CONFIG}
        fast = creds.model_copy(
            update={"aws_client_parameters": params.model_copy(update={"config": config})}
        )
        return fast.get_s3_client()

    # ---------------------------------------------------------------- outage bookkeeping
    def _outage(self, err: Exception, pending: str | None = None) -> None:
        state = self._state()
        with state.lock:
            if pending is not None:
                state.pending.add(pending)
            first, state.warned = not state.warned, True
        if first:
            _logger().warning(
                "S3 result storage %s is unreachable (%s); probe results are kept locally in "
                "%s and will be uploaded when S3 is back",
                self._location(),
                _reason(err),
                self._resolve_path(None),
            )

    def _recovered(self, uploaded: int) -> None:
        state = self._state()
        with state.lock:
            was_down, state.warned = state.warned, False
        if was_down or uploaded:
            _logger().info(
                "S3 result storage %s is reachable; uploaded %d result(s) kept locally",
                self._location(),
                uploaded,
            )

    # ---------------------------------------------------------------- S3 operations
    def _upload(self, relative: str) -> None:
        body = self._resolve_path(relative).read_bytes()
        self._client().put_object(
            Bucket=self.remote.bucket_name, Key=self._key(relative), Body=body
        )

    def _flush_pending(self) -> int:
        """Upload results whose earlier upload failed; returns how many were uploaded."""
        state = self._state()
        with state.lock:
            todo = sorted(state.pending)
        for relative in todo:
            if self._resolve_path(relative).is_file():
                self._upload(relative)
            with state.lock:
                state.pending.discard(relative)
        return len(todo)

    def _remote_listing(self) -> dict[str, tuple[int, datetime]]:
        """``{relative path: (size, last modified)}`` of every object under the folder."""
        prefix = self._key("")
        out = {}
        for page in (
            self._client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.remote.bucket_name, Prefix=prefix)
        ):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(prefix) :]] = (obj["Size"], obj["LastModified"])
        return out

    def _local_files(self) -> dict[str, os.stat_result]:
        base = self._resolve_path(None)
        if not base.is_dir():
            return {}
        return {
            p.relative_to(base).as_posix(): p.stat()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }

    def sync(self) -> int | None:
        """Upload local results that S3 lacks (or holds an older copy of).

        Returns the number uploaded, or None when S3 is unreachable (one warning, no raise).
        """
        if self.remote is None:
            return 0
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            remote = self._remote_listing()
            stale = [
                rel
                for rel, st in self._local_files().items()
                if rel not in remote
                or remote[rel][0] != st.st_size
                or st.st_mtime > remote[rel][1].timestamp() + MTIME_SLACK_S
            ]
            for relative in stale:
                self._upload(relative)
            with self._state().lock:
                self._state().pending.difference_update(stale)
            uploaded = len(stale) + self._flush_pending()
        except (BotoCoreError, ClientError) as err:
            self._outage(err)
            return None
        self._recovered(uploaded)
        return uploaded

    # ---------------------------------------------------------------- Prefect storage API
    def _write_local(self, path: Path, content: bytes) -> None:
        """Write atomically: a reader never sees half a result record."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, path)

    def _read_remote(self, relative: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        missing = FileNotFoundError(f"no result {relative!r} locally or in {self._location()}")
        try:
            obj = self._client().get_object(Bucket=self.remote.bucket_name, Key=self._key(relative))
            content = obj["Body"].read()
        except ClientError as err:
            if _not_found(err):
                raise missing from None
            self._outage(err)
            raise missing from err
        except BotoCoreError as err:
            self._outage(err)
            raise missing from err
        path = self._resolve_path(relative)
        self._write_local(path, content)
        # the local copy is as old as the object, so sync() does not upload it back
        modified = obj["LastModified"].timestamp()
        os.utime(path, (modified, modified))
        return content

    def _read(self, path: str) -> bytes:
        local = self._resolve_path(path)
        if local.is_file():
            return local.read_bytes()
        if self.remote is None:
            raise FileNotFoundError(f"no result at {local}")
        return self._read_remote(self._relative(path))

    def _write(self, path: str, content: bytes) -> str:
        local = self._resolve_path(path)
        self._write_local(local, content)
        if self.remote is not None:
            from botocore.exceptions import BotoCoreError, ClientError

            relative = self._relative(path)
            try:
                self._upload(relative)
                uploaded = self._flush_pending()
            except (BotoCoreError, ClientError) as err:
                self._outage(err, pending=relative)
            else:
                self._recovered(uploaded)
        return str(local)

    async def aread_path(self, path: str) -> bytes:
        return await run_sync_in_worker_thread(self._read, path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        """The result at ``path``: the local file, else the S3 object (then kept locally)."""
        return self._read(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return await run_sync_in_worker_thread(self._write, path, content)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        """Write ``content`` locally, then upload it (best effort); returns the local path."""
        return self._write(path, content)
