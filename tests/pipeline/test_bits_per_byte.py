"""Bits per byte is the fair measure across tokenizers: the denominator is the UTF-8 bytes of
the target text, whatever the tokenizer makes of it (tokens differ, bytes do not)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tasks.models import resolve_candidate
from tasks.models.store import DEFAULT_CACHE_DIR
from tasks.training.finetune import encode_examples

EXAMPLES = [
    {
        "prompt": "Define the noun 'range'.\nDefinition:",
        "target": " an area in which something acts",
    },
    {"prompt": "Summarize.\nSummary:", "target": " créer un fichier, ou l'ouvrir — ✓"},
    {"prompt": "Q:", "target": " 12345 tokens; ½ of them"},
]


def _tokenizers(tmp_path: Path) -> dict:
    out = {"tiny-llama (bytes)": resolve_candidate("tiny-llama", cache_dir=tmp_path)}
    for name in ("smollm2-135m", "gemma3-270m"):  # the real families, where prepared
        folder = DEFAULT_CACHE_DIR / name
        if (folder / "config.json").is_file():
            out[name] = str(folder)
    return {name: AutoTokenizer.from_pretrained(path) for name, path in out.items()}


def test_target_bytes_are_the_same_for_every_tokenizer(tmp_path):
    tokenizers = _tokenizers(tmp_path)
    if len(tokenizers) < 2:
        pytest.skip("no real tokenizer prepared (lensllm models prepare)")
    expected = [len(ex["target"].encode("utf-8")) for ex in EXAMPLES]
    tokens = {}
    for name, tokenizer in tokenizers.items():
        encoded = encode_examples(tokenizer, EXAMPLES, max_seq_len=512)
        assert [e.target_bytes for e in encoded] == expected, name
        assert not any(e.truncated for e in encoded)
        tokens[name] = [sum(label != -100 for label in e.labels) for e in encoded]
    # the token counts differ between tokenizers: per-token losses are not comparable
    assert len({tuple(t) for t in tokens.values()}) == len(tokens)
