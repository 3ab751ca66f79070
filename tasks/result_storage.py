"""Where Prefect persists probe and NTK results (the cache that makes re-runs free)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.filesystems import WritableFileSystem

#: Set by ``lensllm worker`` to the slug of the stack's S3 result storage block.
RESULT_STORAGE_ENV = "LENSLLM_RESULT_STORAGE"


def result_storage(cache: Path) -> str | Path | WritableFileSystem:
    """The block slug in ``LENSLLM_RESULT_STORAGE`` (S3 on the stack), else ``cache/results``.

    A Path, not a str, is local: Prefect reads a str as a block slug.
    """
    return os.environ.get(RESULT_STORAGE_ENV) or Path(cache) / "results"
