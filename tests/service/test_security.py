"""Security defaults: a model folder's own Python code never runs unless the user opts in,
and only safetensors weights are loaded (pickle checkpoints can execute code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.models import check_causal_lm, resolve_candidate
from tasks.records.errors import CandidateError
from tasks.records.schema import ProbeSpec

MARKER_CODE = """
from pathlib import Path
Path(MARKER).write_text("the folder's code was executed")
from transformers import LlamaConfig


class MarkerConfig(LlamaConfig):
    model_type = "lensllm-marker"
"""


def _remote_code_folder(tmp_path: Path) -> Path:
    """A model folder whose config asks transformers to import its own ``marker.py``."""
    folder = tmp_path / "remote-code-model"
    folder.mkdir()
    # transformers imports a copy of the module from its cache: the marker path is absolute
    code = MARKER_CODE.replace("MARKER", repr(str(folder / "CODE_RAN")))
    (folder / "marker.py").write_text(code)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "lensllm-marker",
                "architectures": ["LlamaForCausalLM"],
                "auto_map": {
                    "AutoConfig": "marker.MarkerConfig",
                    "AutoModelForCausalLM": "marker.MarkerModel",
                },
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
                "vocab_size": 64,
            }
        )
    )
    return folder


def test_remote_code_is_refused_by_default_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _remote_code_folder(tmp_path)
    with pytest.raises((CandidateError, ValueError), match="trust_remote_code"):
        resolve_candidate(str(folder), cache_dir=tmp_path / "cache")
    with pytest.raises((CandidateError, ValueError), match="trust_remote_code"):
        check_causal_lm(folder)
    assert not (folder / "CODE_RAN").exists()


def test_probe_and_ntk_loaders_refuse_remote_code_by_default(tmp_path, monkeypatch):
    """Even a folder that skipped resolution (a probe or an NTK task given a path) does not
    run its code: every loader passes the candidate's trust_remote_code (default off)."""
    from tasks.models.tiny_llama import build_byte_tokenizer
    from tasks.ntk_features import compute_ntk_features
    from tasks.training.finetune import prepare_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _remote_code_folder(tmp_path)
    build_byte_tokenizer().save_pretrained(folder)  # the tokenizer loads; the model must not
    spec = ProbeSpec(device="cpu")
    for train in (True, False):
        with pytest.raises(ValueError, match="trust_remote_code"):
            prepare_model(str(folder), spec, train=train)
    with pytest.raises(ValueError, match="trust_remote_code"):
        compute_ntk_features(str(folder), [{"prompt": "a", "target": " b"}] * 2, spec)
    assert not (folder / "CODE_RAN").exists()


def test_remote_code_runs_only_when_the_candidate_opts_in(tmp_path, monkeypatch):
    from flows.config import SelectionConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _remote_code_folder(tmp_path)
    cfg = SelectionConfig(
        candidates=["tiny-llama", {"name": str(folder), "trust_remote_code": True}]
    )
    assert [c.trust_remote_code for c in cfg.candidates] == [False, True]  # per candidate
    with pytest.raises(CandidateError, match="safetensors"):  # the config loads, then ...
        check_causal_lm(folder, trust_remote_code=True)
    assert (folder / "CODE_RAN").exists()  # ... the opt-in did run the folder's code
