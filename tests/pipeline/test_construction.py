"""Model construction is serialised and leaves torch's default dtype at float32
(tasks/runtime/construction.py): transformers sets the process-wide default dtype while it
builds a model, so two builds in two threads could leave bfloat16 behind."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import torch

from tasks.runtime.construction import model_construction

ROOT = Path(__file__).resolve().parents[2]
# Builders that only run inside tasks.models.store.build_cached, which holds the lock.
BUILDERS = {"smollm2.py", "gemma3.py", "builtin.py", "tiny_llama.py"}


def test_the_default_dtype_is_float32_after_a_construction_whatever_it_did():
    with model_construction():
        torch.set_default_dtype(torch.bfloat16)
    assert torch.get_default_dtype() == torch.float32


def test_a_second_thread_waits_for_the_first_construction():
    inside, release, order = threading.Event(), threading.Event(), []

    def first():
        with model_construction():
            inside.set()
            release.wait(5)
            order.append("first done")

    def second():
        inside.wait(5)
        with model_construction():
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(5)
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first done", "second in"]


def _unguarded_model_builds(path: Path) -> list[int]:
    """Lines of ``from_pretrained``/``from_config`` calls on a model class (not a tokenizer or
    config) outside a ``with model_construction()`` block."""
    tree = ast.parse(path.read_text())
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call)
            and getattr(item.context_expr.func, "id", "") == "model_construction"
            for item in node.items
        ):
            guarded.update(range(node.lineno, node.end_lineno + 1))
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("from_pretrained", "from_config")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id.endswith("ForCausalLM")
            and node.lineno not in guarded
        ):
            lines.append(node.lineno)
    return lines


def test_every_model_build_holds_the_construction_lock():
    unguarded = {
        f"{path.relative_to(ROOT)}:{line}"
        for path in (ROOT / "tasks").rglob("*.py")
        if path.name not in BUILDERS
        for line in _unguarded_model_builds(path)
    }
    # finetune._load runs only under prepare_model's lock
    assert {u for u in unguarded if not u.startswith("tasks/training/finetune.py")} == set()
