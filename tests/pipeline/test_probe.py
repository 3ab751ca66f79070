"""Probe fine-tunes on tiny-llama: losses, early stopping, determinism, saving, divergence,
the ProbeSpec recipe (its LoRA config) and per-example evaluation."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.data.splits import fingerprint
from tasks.models import resolve_candidate
from tasks.probing.probe import probe_task, run_probe
from tasks.records.schema import ProbeData, ProbeResult, ProbeSpec
from tasks.training.finetune import (
    collate,
    encode_examples,
    evaluate_loss,
    prepare_model,
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
FAST = {"threads": 1, "progress": False}


def data(train: list[dict], val: list[dict] = VAL, test: list[dict] = TEST, **kw) -> ProbeData:
    return ProbeData(source="test", train=train, val=val, test=test, **kw)


def spec(**fields) -> ProbeSpec:
    """A CPU recipe in fp32 (the same on every CPU; bf16 has tests of its own in
    test_precision.py); ``ProbeSpec`` validates the fields."""
    return ProbeSpec(device="cpu", **{"precision": "fp32", **fields})


CPU = spec()
LORA = spec(learning_rate=1e-2, epochs=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return resolve_candidate("tiny-llama", cache_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def zero_shot(tiny: str) -> ProbeResult:
    return run_probe(tiny, data([]), CPU, **FAST)


@pytest.fixture(scope="module")
def lora(tiny: str) -> ProbeResult:
    fingerprints = {"train_fingerprint": fingerprint(TRAIN), "test_fingerprint": fingerprint(TEST)}
    return run_probe(tiny, data(TRAIN, **fingerprints), LORA, candidate="tiny", **FAST)


def test_zero_shot_is_plain_evaluation(tiny: str, zero_shot: ProbeResult) -> None:
    assert zero_shot.steps == 0 and zero_shot.train_tokens == 0 and zero_shot.flops == 0
    assert zero_shot.method == "zero-shot" and zero_shot.size == 0
    assert zero_shot.candidate == "tiny-llama"  # the folder's name when none is given
    assert zero_shot.trainable_params == 0 and zero_shot.history == []
    model, tokenizer, _ = prepare_model(tiny, CPU, train=False)
    assert not any(p.requires_grad for p in model.parameters())  # frozen for evaluation
    direct = evaluate_loss(model, tokenizer, TEST, max_seq_len=CPU.max_seq_len)
    assert zero_shot.test_loss == pytest.approx(direct["loss"], rel=1e-6)
    # an untrained byte model is close to uniform over its 258 tokens
    assert zero_shot.test_loss == pytest.approx(math.log(258), abs=0.3)


def test_lora_probe_beats_zero_shot(lora: ProbeResult, zero_shot: ProbeResult) -> None:
    assert not lora.diverged
    assert lora.test_loss < zero_shot.test_loss - 0.2
    assert lora.val_loss < lora.zero_shot_val_loss
    assert lora.zero_shot_val_loss == pytest.approx(zero_shot.val_loss, rel=1e-6)
    assert lora.steps == 5 * 4 and lora.n_train == 32
    assert 0 < lora.trainable_params < lora.forward_params
    assert lora.flops == 6 * lora.forward_params * lora.train_tokens
    assert (lora.device, lora.dtype) == ("cpu", "float32")
    assert (lora.method, lora.learning_rate, lora.seed) == ("lora", 1e-2, 0)
    for key in ("wall_time_s", "train_time_s", "eval_time_s"):
        assert getattr(lora, key) > 0


def test_result_names_its_candidate_subset_and_data(lora: ProbeResult) -> None:
    assert lora.candidate == "tiny" and lora.size == len(TRAIN)
    assert lora.train_fingerprint == fingerprint(TRAIN)
    assert lora.test_fingerprint == fingerprint(TEST)
    assert (lora.n_val, lora.n_test) == (len(VAL), len(TEST))


def test_train_tokens_count_prompt_and_target(tiny: str, lora: ProbeResult) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    per_epoch = sum(len(e.input_ids) for e in encode_examples(tokenizer, TRAIN, LORA.max_seq_len))
    assert lora.train_tokens == 5 * per_epoch


def test_per_byte_loss_is_consistent(lora: ProbeResult) -> None:
    # byte tokenizer: one token per target byte plus one EOS per example
    assert lora.test_tokens == lora.test_bytes + len(TEST)
    summed = lora.test_loss * lora.test_tokens
    assert lora.test_loss_per_byte == pytest.approx(summed / lora.test_bytes, rel=1e-9)
    assert lora.test_bits_per_byte == pytest.approx(lora.test_loss_per_byte / math.log(2))
    assert lora.value("bits_per_byte") == lora.test_bits_per_byte
    assert lora.value("loss_per_token") == lora.test_loss
    assert lora.usable("bits_per_byte") and lora.usable("loss_per_token")


def test_full_fine_tuning_trains_every_weight(tiny: str, zero_shot: ProbeResult) -> None:
    full = run_probe(tiny, data(TRAIN), spec(method="full", learning_rate=1e-2, epochs=3), **FAST)
    assert full.trainable_params == full.forward_params
    assert full.test_loss < zero_shot.test_loss - 0.5


def test_early_stopping_restores_best(tiny: str, tmp_path: Path) -> None:
    # Training targets that contradict validation: validation loss rises once memorised.
    train = [{"prompt": ex["prompt"], "target": " zq xv"} for ex in TRAIN]
    recipe = spec(
        method="full", learning_rate=3e-2, epochs=40, early_stopping_patience=2, eval_every=2
    )
    result = run_probe(tiny, data(train), recipe, save_dir=str(tmp_path / "best"), **FAST)
    assert result.stopped_early
    assert result.steps < 40 * 4
    val_curve = [h["val_loss"] for h in result.history]
    assert result.val_loss == min(val_curve)
    assert result.best_step < result.steps
    assert result.training_steps == result.best_step
    # the saved (restored) weights give the best validation loss, not the last one
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "best")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "best")
    reloaded = evaluate_loss(model, tokenizer, VAL, max_seq_len=recipe.max_seq_len)["loss"]
    assert reloaded == pytest.approx(result.val_loss, 1e-5)
    assert val_curve[-1] > result.val_loss


def test_deterministic_given_seed(tiny: str, lora: ProbeResult) -> None:
    again = run_probe(tiny, data(TRAIN), LORA, **FAST)
    assert again.test_loss == lora.test_loss
    assert again.history == lora.history
    other = run_probe(tiny, data(TRAIN), LORA.model_copy(update={"seed": 1}), **FAST)
    assert other.test_loss != lora.test_loss


def test_threads_change_speed_not_result(tiny: str, lora: ProbeResult) -> None:
    two = run_probe(tiny, data(TRAIN), LORA, threads=2, progress=False)
    assert two.threads == 2 and lora.threads == 1
    # (the probe cache key leaves threads out); equal up to float summation order
    assert [h["step"] for h in two.history] == [h["step"] for h in lora.history]
    assert [h["val_loss"] for h in two.history] == pytest.approx(
        [h["val_loss"] for h in lora.history], rel=1e-5
    )
    assert two.test_loss == pytest.approx(lora.test_loss, rel=1e-5)


def test_saved_lora_model_reloads_to_same_logits(tiny: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, tokenizer, _ = prepare_model(tiny, spec(method="lora", seed=0))
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
    recipe = spec(learning_rate=1e-2, epochs=2)
    result = run_probe(tiny, data(TRAIN), recipe, save_dir=str(tmp_path / "out"), **FAST)
    assert result.save_dir == str((tmp_path / "out").resolve())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    reloaded = evaluate_loss(model, tokenizer, TEST, max_seq_len=recipe.max_seq_len)
    assert reloaded["loss"] == pytest.approx(result.test_loss, rel=1e-5)
    with pytest.raises(FileExistsError, match="not empty"):
        run_probe(tiny, data([], []), CPU, save_dir=str(tmp_path / "out"), **FAST)
    # the pipeline's own per-probe folders are replaced when a probe is recomputed
    again = run_probe(
        tiny, data([], []), CPU, save_dir=str(tmp_path / "out"), replace_save_dir=True, **FAST
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", use_safetensors=True)
    replaced = evaluate_loss(model, tokenizer, TEST, max_seq_len=recipe.max_seq_len)
    assert replaced["loss"] == pytest.approx(again.test_loss, rel=1e-5)
    assert again.test_loss > result.test_loss  # the untrained model replaced the fine-tuned one


def test_divergence_is_flagged_and_nan_kept(tiny: str, caplog: pytest.LogCaptureFixture) -> None:
    recipe = spec(method="full", learning_rate=1e8, epochs=3)
    with caplog.at_level(logging.WARNING):
        result = run_probe(tiny, data(TRAIN), recipe, **FAST)
    assert result.diverged
    assert math.isnan(result.test_loss) and math.isnan(result.test_bits_per_byte)
    assert result.steps < 3 * 4
    assert "diverged" in caplog.text
    assert not result.usable("bits_per_byte") and not result.usable("loss_per_token")
    assert result.metrics()["diverged"] == 1.0


def test_max_steps_overrides_epochs_and_progress_logs(
    tiny: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tasks.training.finetune"):
        result = run_probe(
            tiny, data(TRAIN, []), spec(max_steps=3, epochs=50), threads=1, progress=True
        )
    assert result.steps == 3 and result.val_loss is None
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
    ],
)
def test_bad_input_is_rejected(tiny: str, kwargs: dict, match: str) -> None:
    args = {"train": TRAIN[:2], "val": [], "test": TEST[:2], **kwargs}
    with pytest.raises(ValueError, match=match):
        run_probe(tiny, data(**args), CPU, **FAST)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "qlora"}, r"method\n.*'lora' or 'full'"),
        ({"device": "tpu"}, "device must be 'auto', 'cpu' or 'cuda"),
        ({"max_seq_len": 4}, "max_seq_len"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lr": 1e-3}, "lr\n.*[Ee]xtra"),
    ],
)
def test_bad_recipe_is_rejected_before_any_work(fields: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        ProbeSpec(**fields)


def test_probe_task_wraps_run_probe() -> None:
    assert probe_task.fn is run_probe


# --------------------------------------------------------------------------------- recipe


def test_lora_config_carries_the_recipe() -> None:
    recipe = ProbeSpec(
        lora_r=4, lora_alpha=32, lora_dropout=0.1, target_modules=("q_proj", "k_proj", "v_proj")
    )
    config = recipe.lora_config()
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 32, 0.1)
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj"}
    assert config.task_type == "CAUSAL_LM"
    default = ProbeSpec().lora_config()
    assert (default.r, default.lora_alpha, default.lora_dropout) == (8, 16, 0.0)
    assert set(default.target_modules) == {"q_proj", "v_proj"}


def test_prepare_model_applies_the_recipes_adapter(tiny: str) -> None:
    # tiny-llama: 2 layers, hidden 64; a rank-r adapter on a 64x64 projection has r * (64 + 64)
    recipe = spec(lora_r=4, target_modules=("q_proj", "k_proj", "v_proj"))
    model, _, forward_params = prepare_model(tiny, recipe)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * 3 * 4 * (64 + 64)
    model, _, _ = prepare_model(tiny, spec())  # the default: rank 8 on q_proj and v_proj
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 2 * 8 * 128
    full, _, full_forward = prepare_model(tiny, spec(method="full"))
    assert sum(p.numel() for p in full.parameters() if p.requires_grad) == full_forward
    assert forward_params == full_forward  # the adapter adds no forward parameters counted


def test_adapter_only_keeps_what_the_kernel_depends_on() -> None:
    recipe = ProbeSpec(
        method="lora",
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.05,
        target_modules=("q_proj",),
        learning_rate=5e-3,
        epochs=7,
        max_steps=11,
        eval_every=3,
        early_stopping_patience=None,
        batch_size=4,
        max_seq_len=32,
        seed=3,
        device="cpu",
    )
    adapter = recipe.adapter_only()
    default = ProbeSpec()
    # the training settings are back at their defaults ...
    for field in ("learning_rate", "epochs", "max_steps", "eval_every", "batch_size"):
        assert getattr(adapter, field) == getattr(default, field), field
    assert adapter.early_stopping_patience == default.early_stopping_patience
    # ... and what the kernel depends on is kept
    kept = ("method", "lora_r", "lora_alpha", "target_modules", "max_seq_len", "seed", "device")
    for field in kept:
        assert getattr(adapter, field) == getattr(recipe, field), field
    # a new training recipe (learning rate, epochs, ...) gives the same NTK key
    other = recipe.model_copy(update={"learning_rate": 1e-4, "epochs": 1, "batch_size": 16})
    assert other.adapter_only() == adapter
    assert adapter.adapter_only() == adapter
    # but a new adapter, sequence length or seed does not
    for change in ({"lora_r": 8}, {"max_seq_len": 64}, {"seed": 0}, {"method": "full"}):
        assert recipe.model_copy(update=change).adapter_only() != adapter


def test_eval_batch_size_is_at_least_16() -> None:
    assert ProbeSpec(batch_size=4).eval_batch_size == 16
    assert ProbeSpec(batch_size=32).eval_batch_size == 32


# --------------------------------------------------------------------------------- evaluation


def test_evaluate_loss_per_example_in_input_order(tiny: str) -> None:
    model, tokenizer, _ = prepare_model(tiny, CPU, train=False)
    # different lengths, so that evaluation (sorted by length, batches of 3) reorders them
    examples = [
        {"prompt": "Q: " + "x" * (7 - i % 5), "target": " y" * (1 + (i * 3) % 7)} for i in range(10)
    ]
    out = evaluate_loss(model, tokenizer, examples, batch_size=3, per_example=True)
    nll, n_bytes = out["example_nll"], out["example_bytes"]
    assert len(nll) == len(n_bytes) == len(examples)
    assert sum(nll) == pytest.approx(out["sum_nll"], rel=1e-6)  # float32 sums
    assert sum(n_bytes) == out["n_bytes"]
    assert n_bytes == [len(e["target"].encode("utf-8")) for e in examples]
    # each value is that example's own summed NLL, in the order of the input
    for example, value in zip(examples, nll, strict=True):
        alone = evaluate_loss(model, tokenizer, [example])
        assert value == pytest.approx(alone["sum_nll"], rel=1e-5)
    backwards = evaluate_loss(model, tokenizer, examples[::-1], batch_size=3, per_example=True)
    assert backwards["example_nll"] == pytest.approx(nll[::-1], rel=1e-5)
    # the totals are those of the plain evaluation
    plain = evaluate_loss(model, tokenizer, examples, batch_size=3)
    assert "example_nll" not in plain and "example_bytes" not in plain
    for key in ("loss", "loss_per_byte", "bits_per_byte", "sum_nll"):
        assert out[key] == pytest.approx(plain[key], rel=1e-6)
    assert (out["n_tokens"], out["n_bytes"]) == (plain["n_tokens"], plain["n_bytes"])


def test_evaluate_loss_per_example_bytes_of_truncated_targets(tiny: str) -> None:
    model, tokenizer, _ = prepare_model(tiny, CPU, train=False)
    examples = [{"prompt": "p", "target": " " + "z" * 40}, {"prompt": "q", "target": " ok"}]
    out = evaluate_loss(model, tokenizer, examples, max_seq_len=16, per_example=True)
    assert out["n_truncated"] == 1
    assert out["example_bytes"][1] == 3 and out["example_bytes"][0] < 41
    assert sum(out["example_bytes"]) == out["n_bytes"]
    assert sum(out["example_nll"]) == pytest.approx(out["sum_nll"], rel=1e-6)
