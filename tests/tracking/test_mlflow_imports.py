"""MLflow is imported only inside tasks/tracking/ (tests may import it).

A static scan of the source trees for ``import mlflow``, ``from mlflow ...`` (at any depth,
lazy imports in functions included) and ``importlib.import_module("mlflow...")``, and a check
that the tag keys and the registry policy import without pulling MLflow in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_TREES = ("lens_model", "tasks", "flows", "infra")
TRACKING = ROOT / "tasks" / "tracking"


def _is_mlflow(module: str | None) -> bool:
    return bool(module) and (module == "mlflow" or module.startswith("mlflow."))


def mlflow_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, statement)`` of every import of mlflow (or a submodule) in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _is_mlflow(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_mlflow(node.module):
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and _is_mlflow(arg.value)
            ):
                found.append((node.lineno, f"{name}({arg.value!r})"))
    return sorted(found)


def test_the_scanner_finds_every_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, mlflow\n"
        "def f():\n"
        "    import mlflow.transformers as mt\n"
        "    from mlflow.entities import Metric\n"
        "    from mlflow import MlflowClient\n"
        "    import importlib\n"
        "    importlib.import_module('mlflow.pyfunc')\n"
        "    __import__('mlflow')\n"
        "import mlflowish\n"
        "from .mlflow import x\n"
        "'import mlflow'\n"
    )
    assert [line for line, _ in mlflow_imports(sample)] == [1, 3, 4, 5, 7, 8]


def test_mlflow_is_imported_only_in_tasks_tracking():
    outside, inside = [], []
    for tree in SOURCE_TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            found = mlflow_imports(path)
            if path.is_relative_to(TRACKING):
                inside += found
            else:
                outside += [f"{path.relative_to(ROOT)}:{line}: {stmt}" for line, stmt in found]
    assert inside, "the scan found no mlflow import in tasks/tracking/ (is it looking?)"
    assert not outside, "mlflow imported outside tasks/tracking/:\n" + "\n".join(outside)


def test_tag_keys_and_registry_policy_import_without_mlflow():
    code = (
        "import sys\n"
        "import tasks.records.errors, tasks.promotion.policy, tasks.tracking, tasks.tracking.tags\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'mlflow'], 'mlflow imported'\n"
        "from tasks.tracking import Tracker\n"  # the lazy attribute imports it on first use
        "assert 'mlflow' in sys.modules and Tracker.__module__ == 'tasks.tracking.client'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
