"""Every ``lensllm.*`` tag key is defined once, in tasks/tracking/tags.py, and used by name.

A static scan of the project's source trees: no string literal outside tags.py holds a
``lensllm.<key>`` (nor builds one in an f-string), every ``T.NAME`` reference names a constant
of tags.py, and every run kind written is one of ``T.RUN_KINDS``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tasks.tracking import tags as T

ROOT = Path(__file__).resolve().parents[2]
TAGS_FILE = ROOT / "tasks" / "tracking" / "tags.py"
SOURCE_TREES = ("tasks", "flows", "infra", "lens_model")
# A tag key in a literal ("lensllm.task", "tags.`lensllm.task` = 'x'"), or one being built
# ("lensllm.{}", "lensllm.%s"): "lensllm." followed by a word character, "{" or "%". The bare
# namespace "lensllm." (a prefix test such as ``k.startswith("lensllm.")``) names no key.
KEY = re.compile(r"(?<![\w.])lensllm\.[\w{%]")


def _sources() -> list[Path]:
    files = [p for tree in SOURCE_TREES for p in sorted((ROOT / tree).rglob("*.py"))]
    assert len(files) > 20 and TAGS_FILE in files  # the scan sees the project
    return files


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (prose about tags, not tags)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def tag_literals(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal in ``path`` that holds or builds a
    ``lensllm.*`` key (docstrings excluded); f-strings are shown with ``{}`` for each field."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            skip.update(id(v) for v in node.values)
            if KEY.search(text):
                found.append((node.lineno, text))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and KEY.search(node.value)
        ):
            found.append((node.lineno, node.value))
    return sorted(found)


def _defined() -> dict[str, str]:
    """Tag key -> constant name, for every string constant of tags.py."""
    return {v: k for k, v in vars(T).items() if k.isupper() and isinstance(v, str)}


def test_the_scanner_finds_keys_in_literals_and_f_strings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Docstring about ``lensllm.task`` tags."""\n'
        'A = "lensllm.task"\n'
        'B = f"lensllm.{name}"\n'
        "C = \"tags.`lensllm.candidate` = 'x'\"\n"
        'D = "lensllm.%s" % name\n'
        'E = key.startswith("lensllm.")\n'
        'F = f"{T.TASK} and lensllm"\n'
    )
    assert tag_literals(sample) == [
        (2, "lensllm.task"),
        (3, "lensllm.{}"),
        (4, "tags.`lensllm.candidate` = 'x'"),
        (5, "lensllm.%s"),
    ]
    # positive control: in tags.py it finds every lensllm key defined there
    lensllm_keys = {k for k in _defined() if k.startswith("lensllm.")} - {T.PREFIX}
    assert {text for _, text in tag_literals(TAGS_FILE)} == lensllm_keys
    assert len(lensllm_keys) >= 15


def test_no_tag_key_literal_outside_tags_py():
    defined = _defined()
    stray = []
    for path in _sources():
        if path == TAGS_FILE:
            continue
        for line, text in tag_literals(path):
            key = re.search(r"lensllm\.\w+", text)
            if key and key.group(0) in defined:
                hint = f"use T.{defined[key.group(0)]}"
            else:
                hint = "not a key of tags.py: define it there"
            stray.append(f"{path.relative_to(ROOT)}:{line}: {text!r} ({hint})")
    assert not stray, "tag keys written out instead of taken from tasks.tracking.tags:\n" + (
        "\n".join(stray)
    )


def test_tags_py_defines_each_key_once_and_well_formed():
    constants = {k: v for k, v in vars(T).items() if k.isupper() and isinstance(v, str)}
    values = list(constants.values())
    assert len(values) == len(set(values)), f"one key under two names: {constants}"
    for name, key in constants.items():
        if key.startswith("lensllm.") and not name.endswith("PREFIX"):
            assert re.fullmatch(r"lensllm\.[a-z][a-z0-9_]*", key), f"{name} = {key!r}"
    # the redesign merged the old duplicate keys into one each
    assert T.TASK == "lensllm.task" and "lensllm.task_key" not in values
    assert T.RUN_KIND == "lensllm.run_kind" and "lensllm.kind" not in values
    assert set(T.PROVENANCE) <= set(values)


def _tags_aliases(tree: ast.AST) -> set[str]:
    """Local names under which a module imports tasks.tracking.tags."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "tasks.tracking":
            names.update(a.asname or a.name for a in node.names if a.name == "tags")
        elif isinstance(node, ast.Import):
            names.update(a.asname for a in node.names if a.name == "tasks.tracking.tags")
    names.discard(None)
    return names


def test_every_tag_reference_is_defined():
    defined = {k for k in vars(T) if k.isupper()}
    undefined, users = [], 0
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        aliases = _tags_aliases(tree)
        users += bool(aliases)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr not in defined
            ):
                undefined.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.attr}")
    assert users >= 5  # tracking, registry, flows ... import the tag keys
    assert not undefined, "references to tag constants tags.py does not define:\n" + "\n".join(
        undefined
    )


def test_run_kinds_written_are_known():
    """Every ``RUN_KIND`` a module writes as a constant is one tags.py declares, and the
    modules that create runs do write them (so the scan finds something to check)."""
    written: dict[str, str] = {}
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        aliases = _tags_aliases(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Attribute)
                    and isinstance(key.value, ast.Name)
                    and key.value.id in aliases
                    and key.attr == "RUN_KIND"
                    and isinstance(value, ast.Constant)
                ):
                    written[f"{path.relative_to(ROOT)}:{node.lineno}"] = value.value
    assert len(set(written.values())) >= 2, written  # selection, candidate, replay ...
    unknown = {where: kind for where, kind in written.items() if kind not in T.RUN_KINDS}
    assert not unknown, unknown
