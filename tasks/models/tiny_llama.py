"""``tiny-llama``: a tiny seeded LlamaForCausalLM with an offline byte-level tokenizer, for
tests and smoke runs (no download, builds in a second)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.models.builtin import BuiltinFamily
from tasks.models.store import build_cached

NAME = "tiny-llama"
TINY_LLAMA_SEED = 0


def build_byte_tokenizer() -> Any:
    """A byte-level tokenizer with 256 byte tokens plus ``<eos>`` and ``<pad>``; no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    tokenizer.add_special_tokens({"eos_token": "<eos>", "pad_token": "<pad>"})
    return tokenizer


def build(dest: Path) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(TINY_LLAMA_SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {"name": "tiny-llama", "source": "random init", "seed": TINY_LLAMA_SEED}


def resolve(name: str, root: Path) -> Path | None:
    return build_cached(root / NAME, build) if name == NAME else None


FAMILY = BuiltinFamily(
    name=NAME, examples=(NAME,), resolve=resolve, source="random init (tests, smoke runs)"
)
