"""A user's own data file for a live audit: Python function -> the first line of its docstring.

usage: python benchmarks/python_docstrings.py [OUT]   (make audit-docstrings-data)
       (default OUT: out/python-docstrings.jsonl)

Reads the standard library of the Python that runs it (its ``.py`` sources, parsed with
``ast``, nothing imported) and writes one JSON object per public function or method with a
docstring::

    {"prompt": "def quote(string, safe='/', encoding=None, errors=None):", "target":
     "quote('abc def') -> 'abc%20def'", "module": "urllib.parse"}

The prompt is the ``def`` line as ``ast`` unparses it, the target the docstring's first line,
the module the group (one module's functions stay in one split). Pairs with either side over
``MAX_CHARS`` characters are left out (the probes' 40-token sequences would cut them), as are
test suites, IDLE, tkinter, lib2to3 and the ensurepip bundle; a ``def`` line seen twice is kept
once (the first module in sorted order). Deterministic for a given Python version.
"""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "out" / "python-docstrings.jsonl"
MAX_CHARS = 60
SKIPPED = ("test", "tests", "idlelib", "tkinter", "lib2to3", "ensurepip", "site-packages")


def _modules(stdlib: Path):
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).with_suffix("").parts
        if any(p in SKIPPED or p.startswith(("_", "test_")) for p in parts if p != "__init__"):
            continue
        name = ".".join(p for p in parts if p != "__init__")
        yield name, path


def _functions(tree: ast.Module):
    """Public module-level functions and public methods of public classes."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield item


def pairs(stdlib: Path):
    seen = set()
    for module, path in _modules(stdlib):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for fn in _functions(tree):
            doc = ast.get_docstring(fn)
            if fn.name.startswith("_") or not doc:
                continue
            summary = doc.strip().splitlines()[0].strip()
            prompt = f"def {fn.name}({ast.unparse(fn.args)}):"
            if not (10 <= len(summary) <= MAX_CHARS and len(prompt) <= MAX_CHARS):
                continue
            if prompt in seen:
                continue
            seen.add(prompt)
            yield {"prompt": prompt, "target": summary, "module": module}


def main(out: Path) -> None:
    write_rows(pairs, out)


def write_rows(pairs_of, out: Path) -> None:
    """The rows ``pairs_of(stdlib)`` yields for this Python's standard library, as JSON lines
    in ``out``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = list(pairs_of(stdlib))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    modules = len({r["module"] for r in rows})
    print(f"{len(rows)} functions from {modules} modules of {stdlib} -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
