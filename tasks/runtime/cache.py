"""Cache keys that follow the code: a persisted result is reused only while the project code
that computed it is unchanged.

Prefect's ``TASK_SOURCE`` hashes only the task function's own source, so a change in a helper
it calls (the training loop, the loss, the tokenisation, the NTK maths) would silently reuse
stale probes. :class:`CodeVersion` hashes every project module a task can execute instead: the
task's module and, transitively, every project module it imports (at the top or inside a
function; found by reading the source, so the set is a superset of what one call runs). A
module imported only as the parent package of another (``tasks/__init__.py`` for
``tasks.probing.probe``) counts with its own file, not with what it imports.

:func:`cached` gives a task its persisted, code-keyed cache: ``INPUTS`` (minus arguments that
do not change the result, such as the torch thread count) plus :class:`CodeVersion`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, CachePolicy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("lens_model", "tasks", "flows", "infra")


def module_file(name: str, root: Path) -> Path | None:
    """The source file of project module ``name`` under ``root`` (None if not a project file)."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(name: str, file: Path, root: Path) -> set[str]:
    """Project modules that ``file`` (module ``name``) imports anywhere in its source."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            # ``from pkg import sub`` imports the submodule when there is one
            found.update(
                f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}", root)
            )
    return {m for m in found if module_file(m, root)}


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_closure(modules: Iterable[str], root: Path | None = None) -> dict[str, Path]:
    """Every project module that importing ``modules`` can execute, with its file (read from
    ``root``, by default the project this module belongs to)."""
    root = root or PROJECT_ROOT
    todo = [m for m in modules if module_file(m, root)]
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        file = module_file(name, root)
        seen[name] = file
        todo.extend(_imported(name, file, root))
        for parent in _parents(name):  # runs on import; its own imports are not followed
            if parent not in seen and module_file(parent, root):
                seen[parent] = module_file(parent, root)
    return dict(sorted(seen.items()))


def code_hash(modules: Iterable[str], root: Path | None = None) -> str:
    """sha256 over the names and contents of :func:`module_closure` of ``modules``.

    Computed once per process (and root): a process runs the code it imported, so a file
    edited while it runs must not relabel results computed by the old code; the next process
    sees the edit.
    """
    return _code_hash(tuple(sorted(modules)), root or PROJECT_ROOT)


@functools.cache
def _code_hash(modules: tuple[str, ...], root: Path) -> str:
    digest = hashlib.sha256()
    for name, file in module_closure(modules, root).items():
        digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass
class CodeVersion(CachePolicy):
    """Cache-key part: :func:`code_hash` of ``modules`` (from ``root``, by default this
    project)."""

    modules: tuple[str, ...] = ()
    root: Path | None = None

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        return code_hash(self.modules, self.root)


def code_keyed(task_fn: Any, *, exclude: tuple[str, ...] = (), extra: CachePolicy | None = None):
    """``INPUTS`` (without ``exclude``) + :class:`CodeVersion` of the task's module (+ extra)."""
    policy = INPUTS if not exclude else INPUTS - exclude[0]
    for name in exclude[1:]:
        policy = policy - name
    policy = policy + CodeVersion(modules=(task_fn.__module__,))
    return policy + extra if extra is not None else policy


def cached(task: Any, storage: Any, *, exclude: tuple[str, ...] = (), refresh: bool = False):
    """``task`` with a persisted result in ``storage``, keyed on its inputs and its code."""
    return task.with_options(
        cache_policy=code_keyed(task.fn, exclude=exclude),
        persist_result=True,
        result_storage=storage,
        refresh_cache=refresh or None,
    )
