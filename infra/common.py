"""What every part of the stack shares: the loopback address, the error type, private files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tasks.records.errors import LensLLMUserError

HOST = "127.0.0.1"


class StackError(LensLLMUserError, RuntimeError):
    """A stack server could not be started, checked or stopped; the message says how to fix it
    (exit status 2 in the CLI)."""


def write_private(path: Path, data: Any) -> None:
    """Write JSON readable by the owner only (created 0600, never world-readable on the way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(data, file, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
