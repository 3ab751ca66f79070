"""The model cache: every built-in is written once into a folder (default ``.lensllm/models``)
through a temporary folder and a rename, so an interrupted build never leaves a half folder
behind; a metadata file records where it came from and how long it took."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.runtime.compute_threads import run_on_compute_thread
from tasks.runtime.construction import model_construction

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = PROJECT_ROOT / ".lensllm" / "models"
METADATA_FILE = "lensllm_candidate.json"


def cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR


def is_complete(folder: Path) -> bool:
    return (folder / METADATA_FILE).is_file() and (folder / "config.json").is_file()


def _build(build: Callable[[Path], dict[str, Any]], tmp: Path, *, threads: None) -> dict[str, Any]:
    """``build(tmp)`` on a compute thread: a build runs torch kernels, and a thread outside the
    compute threads that does would slow every later step (tasks.runtime.compute_threads)."""
    with model_construction():  # a build instantiates models (tasks.runtime.construction)
        return build(tmp)


def build_cached(folder: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Run ``build(tmp)`` into a temporary sibling of ``folder`` and rename it into place."""
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is a normal shared folder
    try:
        start = time.perf_counter()
        metadata = run_on_compute_thread(_build, build, tmp)
        metadata["build_time_s"] = round(time.perf_counter() - start, 3)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if folder.exists() and not is_complete(folder):
            shutil.rmtree(folder)  # a leftover from an older, non-atomic writer
        try:
            os.rename(tmp, folder)
        except OSError:
            if not is_complete(folder):  # not a concurrent builder that won the race
                raise
        logger.info("built %s in %.1f s", folder, metadata["build_time_s"])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata written next to a cached built-in (source, build time), or ``{}``."""
    path = Path(folder) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
