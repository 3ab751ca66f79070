"""A user's own data file for a live audit: code completion, a Python function's next line.

usage: python benchmarks/python_next_line.py [OUT]   (make audit-next-line-data)
       (default OUT: out/python-next-line.jsonl)

Reads the standard library of the Python that runs it, as ``benchmarks/python_docstrings.py``
does (the same modules, parsed with ``ast``, nothing imported), and writes one JSON object per
public function or method whose body has at least two lines of code after its docstring::

    {"prompt": "def copy(self):\\n    import copy", "target": "    return copy.copy(self)",
     "module": "..."}

The prompt is the ``def`` line and the body's first line of code as written (indentation kept,
relative to the ``def``), the target the next line of code: the first lines of the body's
statements in source order, so blank lines, comments and the insides of long strings are
skipped. Every side is at most ``MAX_CHARS`` characters (three sides must fit the probes'
40 tokens), a target has at least ``MIN_TARGET`` non-blank characters, and a prompt seen twice
is kept once (the first module in sorted order). Deterministic for a given Python version.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from python_docstrings import _functions, _modules, write_rows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "out" / "python-next-line.jsonl"
MAX_CHARS = 40
MIN_TARGET = 8


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> list[str]:
    """The first lines of the body's statements after the docstring, in source order and
    re-indented relative to the ``def``, up to the first line that is not a whole line of code
    (a statement over several lines that is not a block's header, such as a long string)."""
    doc = fn.body[0] if ast.get_docstring(fn) is not None else None
    stmts = sorted(
        (n for n in ast.walk(fn) if isinstance(n, ast.stmt) and n is not fn and n is not doc),
        key=lambda n: (n.lineno, n.col_offset),
    )
    out, seen = [], set()
    for n in stmts:
        if n.lineno in seen:
            continue  # two statements on one line: one line of code
        seen.add(n.lineno)
        line = lines[n.lineno - 1]
        if n.end_lineno != n.lineno and not line.rstrip().endswith(":"):
            break
        out.append(line[fn.col_offset :].rstrip())
    return out


def pairs(stdlib: Path):
    seen = set()
    for module, path in _modules(stdlib):
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (SyntaxError, UnicodeDecodeError):
            continue
        lines = text.splitlines()
        for fn in _functions(tree):
            if fn.name.startswith("_"):
                continue
            head = lines[fn.lineno - 1][fn.col_offset :].rstrip()
            code = _code_lines(fn, lines)
            if not head.endswith(":") or len(code) < 2:
                continue  # a def over several lines, or too short a body
            prompt, target = f"{head}\n{code[0]}", code[1]
            sides = (head, code[0], target)
            if max(map(len, sides)) > MAX_CHARS or len(target.strip()) < MIN_TARGET:
                continue
            if prompt in seen:
                continue
            seen.add(prompt)
            yield {"prompt": prompt, "target": target, "module": module}


def main(out: Path) -> None:
    write_rows(pairs, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
