"""The next-line audit's data file (benchmarks/python_next_line.py): a function's def line and
first line of code -> its next line of code, docstrings, comments and blank lines skipped,
indentation kept relative to the def, and a file the audit's config reads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tasks.data.sources.files import read
from tasks.records.schema import DataSpec

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _script():
    sys.path.insert(0, str(BENCHMARKS))  # it imports python_docstrings beside it
    try:
        spec = importlib.util.spec_from_file_location(
            "python_next_line", BENCHMARKS / "python_next_line.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_a_functions_first_line_of_code_predicts_its_next(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "shapes.py").write_text(
        "class Box:\n"
        "    def area(self):\n"
        '        """The area."""\n'
        "        # width first\n"
        "        w = self.width\n"
        "\n"
        "        return w * self.height\n"
        "def _private(x):\n    y = x + 1\n    return y * 2\n"
        "def short(x):\n    y = x\n    del y\n"  # a target under MIN_TARGET characters
        'def text():\n    s = """\n    <p>\n    """\n    return s\n'  # a long string
        "def long(a,\n         b):\n    c = a\n    return c + b\n"  # a def over two lines
        "def one(x):\n    return x\n"  # one line of code
    )
    rows = list(_script().pairs(lib))
    assert rows == [
        {"prompt": "def area(self):\n    w = self.width", "target": "    return w * self.height",
         "module": "shapes"},
    ]  # fmt: skip


def test_the_audit_config_reads_the_file(tmp_path):
    out = tmp_path / "next-line.jsonl"
    _script().main(out)
    spec = DataSpec(
        source=str(out), template="{prompt}\n", target_field="target", group_field="module"
    )
    examples = read(spec).examples
    assert len(examples) > 1000  # this Python's standard library
    assert all(e["target"].startswith(" ") for e in examples)  # indented: inside a body
