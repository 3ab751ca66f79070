"""The docstring audit's data file (benchmarks/python_docstrings.py): public functions and
methods with a short docstring, private and test code left out, each def line once, and a
file the audit's config reads into examples grouped by module."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tasks.data.sources.files import read
from tasks.records.schema import DataSpec

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "python_docstrings.py"


def _script():
    spec = importlib.util.spec_from_file_location("python_docstrings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_public_documented_functions_become_prompt_target_pairs(tmp_path):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "pkg" / "__init__.py").write_text(
        'def join(a, b=1):\n    """Join two things together.\n\n    More."""\n'
        'def _hidden(x):\n    """A private helper function."""\n'
        'class Box:\n    def open(self, *, force=False):\n        """Open the box, maybe."""\n'
    )
    (lib / "other.py").write_text(
        'def join(a, b=1):\n    """The same def line, seen again."""\n'
        'def long(x):\n    """' + "word " * 20 + '"""\n'
        "def undocumented(x):\n    return x\n"
    )
    (lib / "test" / "test_pkg.py").write_text('def check(x):\n    """Test code is skipped."""\n')
    rows = list(_script().pairs(lib))
    assert [(r["module"], r["prompt"], r["target"]) for r in rows] == [
        ("other", "def join(a, b=1):", "The same def line, seen again."),  # pkg's join: a repeat
        ("pkg", "def open(self, *, force=False):", "Open the box, maybe."),
    ]


def test_the_audit_config_reads_the_file_grouped_by_module(tmp_path):
    out = tmp_path / "docstrings.jsonl"
    _script().main(out)
    first = json.loads(out.read_text().splitlines()[0])
    assert set(first) == {"prompt", "target", "module"}
    spec = DataSpec(
        source=str(out), template='{prompt}\n    """', target_field="target", group_field="module"
    )
    examples = read(spec).examples
    assert len(examples) > 1000  # this Python's standard library
    assert examples[0]["prompt"].endswith('\n    """')
    assert examples[0]["group"] == first["module"]
