"""The architecture holds in the imports: ``flows -> tasks -> lens_model``. ``lens_model``
imports nothing of the project; ``tasks`` and ``infra`` never import ``flows``; and no two
project modules share a file name."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lens_model", "tasks", "flows", "infra")
# what each package may import of the project
ALLOWED = {
    "lens_model": {"lens_model"},
    "tasks": {"lens_model", "tasks"},
    "infra": {"lens_model", "tasks", "infra"},
    "flows": {"lens_model", "tasks", "infra", "flows"},
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _project_imports(path: Path) -> set[tuple[str, int]]:
    """(top-level project package, line) of every import in ``path``, lazy ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        found.update((n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down_the_layers(package):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {top}"
        for path in _modules(package)
        for top, line in _project_imports(path)
        if top not in ALLOWED[package]
    ]
    assert _modules(package), f"no modules found under {package}/"
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_module_names_are_unique_across_the_project():
    names = Counter(
        path.name
        for package in PACKAGES
        for path in _modules(package)
        if path.name != "__init__.py"
    )
    assert not [name for name, count in names.items() if count > 1]
