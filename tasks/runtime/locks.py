"""Inter-process locks for what must not run twice at once: a selection of the same config
and data, and the registry's read-then-write promotion gate.

Locks are ``flock`` files under a lock folder (by default ``<cache_dir>/locks``): the OS
releases them when the holder dies, so a ``kill -9`` leaves no stale lock. They serialise
processes that share that folder (every worker on one machine, or machines sharing the cache
folder over a file system with working ``flock``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)


def lock_path(lock_dir: str | Path, kind: str, *key: str) -> Path:
    """The lock file for ``kind`` (e.g. ``selection``) and a key made of strings."""
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
    return Path(lock_dir) / f"{kind}-{digest}.lock"


@contextmanager
def held(
    path: str | Path, what: str, log: logging.Logger | logging.LoggerAdapter | None = None
) -> Iterator[float]:
    """Hold the lock at ``path`` for the body; waits (saying so once) while another process
    holds it. Yields the seconds spent waiting."""
    log = log or logger
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    start = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s: another run holds %s", what, path)
        lock.acquire()
    try:
        yield time.monotonic() - start
    finally:
        lock.release()
