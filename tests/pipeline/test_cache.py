"""Cache keys follow the code: a change in any project module a cached task executes (not only
the task function's own source) invalidates its persisted results; unchanged code hits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.runtime import cache
from tasks.runtime.cache import PROJECT_PACKAGES, PROJECT_ROOT, code_hash, module_closure


def _copy_project(dest: Path) -> Path:
    for package in PROJECT_PACKAGES:
        shutil.copytree(
            PROJECT_ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def _edit(file: Path, old: str, new: str) -> None:
    text = file.read_text()
    assert old in text, f"{old!r} not in {file}"
    file.write_text(text.replace(old, new, 1))


def test_the_probe_depends_on_its_helpers_and_not_on_unrelated_modules():
    closure = module_closure(["tasks.probing.probe"])
    # the training loop, the loss and the tokenisation live in tasks.training.finetune
    assert {
        "tasks.probing.probe",
        "tasks.training.finetune",
        "tasks.records.schema",
        "tasks.records.errors",
    } <= set(closure)
    assert not any(m.startswith(("tasks.tracking", "flows", "lens_model")) for m in closure)
    ntk = module_closure(["tasks.ntk_features"])
    # the NTK maths keys the NTK cache
    assert {"tasks.training.finetune", "lens_model.ntk"} <= set(ntk)


def test_editing_a_helper_changes_the_probe_key_and_an_unrelated_edit_does_not(tmp_path):
    root = _copy_project(tmp_path)
    before = code_hash(["tasks.probing.probe"], root)
    assert code_hash(["tasks.probing.probe"], root) == before  # deterministic
    assert before == code_hash(["tasks.probing.probe"])  # the copy is the project as it is

    _edit(root / "tasks" / "tracking" / "runs.py", '"""', '"""Edited. ')
    cache._code_hash.cache_clear()  # a new process
    # MLflow logging is not the probe's code
    assert code_hash(["tasks.probing.probe"], root) == before

    # evaluate_loss, the loss definition, is not in tasks/probing/probe.py (TASK_SOURCE missed it)
    finetune = root / "tasks" / "training" / "finetune.py"
    _edit(finetune, "total / n_tokens", "total / max(n_tokens, 1)")
    # this process still runs the old code
    assert code_hash(["tasks.probing.probe"], root) == before
    cache._code_hash.cache_clear()  # the next process
    assert code_hash(["tasks.probing.probe"], root) != before


@pytest.mark.integration
@pytest.mark.slow
def test_a_probe_cache_misses_after_a_helper_changes_and_hits_while_unchanged(
    prefect_harness, tmp_path, monkeypatch
):
    """The real cached probe task: run, re-run (Cached), edit the training loop in a copy of
    the project that the cache key reads, re-run (computed again)."""
    from prefect import flow

    from tasks.models import resolve_candidate
    from tasks.probing.plan import NOT_IN_CACHE_KEY
    from tasks.probing.probe import probe_task
    from tasks.records.schema import ProbeData, ProbeSpec

    monkeypatch.setattr(cache, "PROJECT_ROOT", _copy_project(tmp_path / "project"))
    model = resolve_candidate("tiny-llama", cache_dir=tmp_path / "models")
    rows = [{"prompt": f"Q{i}: say cat", "target": " cat"} for i in range(12)]
    data = ProbeData(source="test", train=rows[:8], val=[], test=rows[8:])
    spec = ProbeSpec(epochs=1, batch_size=4, max_seq_len=32, device="cpu")
    probe = cache.cached(probe_task, tmp_path / "results", exclude=NOT_IN_CACHE_KEY)

    @flow
    def one_probe(threads: int) -> str:
        state = probe(model, data, spec, threads=threads, progress=False, return_state=True)
        return state.name

    assert one_probe(1) == "Completed"
    assert one_probe(2) == "Cached"  # same code, same inputs; threads do not change results
    _edit(
        tmp_path / "project" / "tasks" / "training" / "finetune.py",
        "out.train_tokens += int(",
        "out.train_tokens += 0 + int(",
    )
    cache._code_hash.cache_clear()  # the next process (this one keeps the code it imported)
    assert one_probe(1) == "Completed"  # a helper of the probe changed: recomputed
    assert one_probe(1) == "Cached"


def test_the_records_spell_the_weight_spectrum_names_as_lens_model_does():
    from lens_model import weight_spectrum
    from tasks.records import schema

    assert schema.SPECTRAL_METRICS == weight_spectrum.SUMMARY_METRICS
    assert schema.SPECTRAL_RANKING_METRIC == weight_spectrum.RANKING_METRIC
    assert schema.SPECTRAL_MIN_TAIL == weight_spectrum.DEFAULT_MIN_TAIL
