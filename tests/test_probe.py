"""Probe fine-tunes on tiny-llama: losses, early stopping, determinism, saving, divergence."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.models import resolve_candidate
from tasks.probe import (
    collate,
    encode_examples,
    evaluate_loss,
    prepare_model,
    probe_task,
    run_probe,
    save_finetuned_model,
    train_batches,
    train_step,
)

WORDS = ["cat", "dog", "sun", "tree", "bird", "fish", "moon", "star"]


def _example(i: int) -> dict:
    word = WORDS[i % len(WORDS)]
    return {"prompt": f"Q{i}: say {word}:", "target": f" {word} {word}"}


DATA = [_example(i) for i in range(64)]
TRAIN, VAL, TEST = DATA[:32], DATA[32:48], DATA[48:]
FAST = {"device": "cpu", "threads": 1, "progress": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return resolve_candidate("tiny-llama", cache_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def zero_shot(tiny: str) -> dict:
    return run_probe(tiny, [], VAL, TEST, **FAST)


@pytest.fixture(scope="module")
def lora(tiny: str) -> dict:
    return run_probe(tiny, TRAIN, VAL, TEST, learning_rate=1e-2, epochs=5, **FAST)


def test_zero_shot_is_plain_evaluation(tiny: str, zero_shot: dict) -> None:
    assert zero_shot["steps"] == 0 and zero_shot["train_tokens"] == 0 and zero_shot["flops"] == 0
    assert zero_shot["method"] == "zero-shot"
    model, tokenizer, _ = prepare_model(tiny, method="none")
    direct = evaluate_loss(model, tokenizer, TEST)
    assert zero_shot["test_loss"] == pytest.approx(direct["loss"], rel=1e-6)
    # an untrained byte model is close to uniform over its 258 tokens
    assert zero_shot["test_loss"] == pytest.approx(math.log(258), abs=0.3)


def test_lora_probe_beats_zero_shot(lora: dict, zero_shot: dict) -> None:
    assert not lora["diverged"]
    assert lora["test_loss"] < zero_shot["test_loss"] - 0.2
    assert lora["val_loss"] < lora["zero_shot_val_loss"]
    assert lora["zero_shot_val_loss"] == pytest.approx(zero_shot["val_loss"], rel=1e-6)
    assert lora["steps"] == 5 * 4 and lora["n_train"] == 32
    assert 0 < lora["trainable_params"] < lora["forward_params"]
    assert lora["flops"] == 6 * lora["forward_params"] * lora["train_tokens"]
    assert (lora["device"], lora["dtype"]) == ("cpu", "float32")
    for key in ("wall_time_s", "train_time_s", "eval_time_s"):
        assert lora[key] > 0


def test_train_tokens_count_prompt_and_target(tiny: str, lora: dict) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    per_epoch = sum(len(e.input_ids) for e in encode_examples(tokenizer, TRAIN, 64))
    assert lora["train_tokens"] == 5 * per_epoch


def test_per_byte_loss_is_consistent(lora: dict) -> None:
    # byte tokenizer: one token per target byte plus one EOS per example
    assert lora["test_tokens"] == lora["test_bytes"] + len(TEST)
    summed = lora["test_loss"] * lora["test_tokens"]
    assert lora["test_loss_per_byte"] == pytest.approx(summed / lora["test_bytes"], rel=1e-9)
    assert lora["test_bits_per_byte"] == pytest.approx(lora["test_loss_per_byte"] / math.log(2))


def test_full_fine_tuning_trains_every_weight(tiny: str, zero_shot: dict) -> None:
    full = run_probe(tiny, TRAIN, VAL, TEST, method="full", learning_rate=1e-2, epochs=3, **FAST)
    assert full["trainable_params"] == full["forward_params"]
    assert full["test_loss"] < zero_shot["test_loss"] - 0.5


def test_early_stopping_restores_best(tiny: str, tmp_path: Path) -> None:
    # Training targets that contradict validation: validation loss rises once memorised.
    train = [{"prompt": ex["prompt"], "target": " zq xv"} for ex in TRAIN]
    result = run_probe(
        tiny,
        train,
        VAL,
        TEST,
        method="full",
        learning_rate=3e-2,
        epochs=40,
        early_stopping_patience=2,
        eval_every=2,
        save_dir=str(tmp_path / "best"),
        **FAST,
    )
    assert result["stopped_early"]
    assert result["steps"] < 40 * 4
    val_curve = [h["val_loss"] for h in result["history"]]
    assert result["val_loss"] == min(val_curve)
    assert result["best_step"] < result["steps"]
    # the saved (restored) weights give the best validation loss, not the last one
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "best")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "best")
    assert evaluate_loss(model, tokenizer, VAL)["loss"] == pytest.approx(result["val_loss"], 1e-5)
    assert val_curve[-1] > result["val_loss"]


def test_deterministic_given_seed(tiny: str, lora: dict) -> None:
    again = run_probe(tiny, TRAIN, VAL, TEST, learning_rate=1e-2, epochs=5, **FAST)
    assert again["test_loss"] == lora["test_loss"]
    assert again["history"] == lora["history"]
    other = run_probe(tiny, TRAIN, VAL, TEST, learning_rate=1e-2, epochs=5, seed=1, **FAST)
    assert other["test_loss"] != lora["test_loss"]


def test_saved_lora_model_reloads_to_same_logits(tiny: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, tokenizer, _ = prepare_model(tiny, method="lora", seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    encoded = encode_examples(tokenizer, TRAIN, 64)
    for batch in train_batches(encoded, 8, seed=0, epoch=0, pad_token_id=tokenizer.pad_token_id):
        train_step(model, batch, optimizer)
    batch = collate(encode_examples(tokenizer, TEST, 64), tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        in_memory = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        with model.disable_adapter():
            base = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    assert not torch.allclose(in_memory, base, atol=1e-3)  # the adapter changed the model

    folder = Path(save_finetuned_model(model, tokenizer, str(tmp_path / "merged"), "lora"))
    assert not (folder / "adapter_config.json").exists()  # a plain model, no local-base link
    reloaded = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    with torch.no_grad():
        logits = reloaded(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    torch.testing.assert_close(logits, in_memory, atol=1e-5, rtol=1e-5)


def test_run_probe_save_dir_matches_reported_test_loss(tiny: str, tmp_path: Path) -> None:
    result = run_probe(
        tiny, TRAIN, VAL, TEST, learning_rate=1e-2, epochs=2, save_dir=str(tmp_path / "out"), **FAST
    )
    assert result["save_dir"] == str((tmp_path / "out").resolve())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    reloaded = evaluate_loss(model, tokenizer, TEST)
    assert reloaded["loss"] == pytest.approx(result["test_loss"], rel=1e-5)
    with pytest.raises(FileExistsError, match="not empty"):
        run_probe(tiny, [], [], TEST, save_dir=str(tmp_path / "out"), **FAST)


def test_divergence_is_flagged_and_nan_kept(tiny: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = run_probe(tiny, TRAIN, VAL, TEST, method="full", learning_rate=1e8, **FAST)
    assert result["diverged"]
    assert math.isnan(result["test_loss"]) and math.isnan(result["test_bits_per_byte"])
    assert result["steps"] < 3 * 4
    assert "diverged" in caplog.text


def test_max_steps_overrides_epochs_and_progress_logs(
    tiny: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tasks.probe"):
        result = run_probe(
            tiny, TRAIN, [], TEST, max_steps=3, epochs=50, device="cpu", threads=1, progress=True
        )
    assert result["steps"] == 3 and result["val_loss"] is None
    assert "step 3/3 train loss" in caplog.text


def test_truncation_keeps_target_and_masks_prompt(tiny: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    long = {"prompt": "x" * 100, "target": " short"}
    (enc,) = encode_examples(tokenizer, [long], max_seq_len=16)
    assert len(enc.input_ids) == 16 and enc.truncated
    targets = [t for t in enc.labels if t != -100]
    assert targets == tokenizer(" short", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    assert enc.target_bytes == len(" short")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test": []}, "test is empty"),
        ({"train": [{"prompt": "a", "target": ""}]}, "empty or missing 'target'"),
        ({"train": [{"text": "a"}]}, "must be a dict with str 'prompt'"),
        ({"method": "qlora"}, "method must be"),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_bad_input_is_rejected(tiny: str, kwargs: dict, match: str) -> None:
    args = {"train": TRAIN[:2], "val": [], "test": TEST[:2], **FAST, **kwargs}
    with pytest.raises(ValueError, match=match):
        run_probe(tiny, args.pop("train"), args.pop("val"), args.pop("test"), **args)


def test_probe_task_wraps_run_probe() -> None:
    assert probe_task.fn is run_probe
