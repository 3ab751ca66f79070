"""Probe: fine-tune one candidate on one training subset and measure its test loss.

The building blocks (:func:`encode_examples`, :func:`collate`, :func:`prepare_model`,
:func:`train_step`, :func:`evaluate_loss`) are public so that a bare PyTorch loop (e.g.
``benchmarks/probe_overhead.py``) runs exactly the same steps as :func:`run_probe`.

Loss conventions
----------------
An example is ``{"prompt": str, "target": str}``. The sequence is the prompt tokens (with the
tokenizer's own special tokens, e.g. BOS), then the target tokens, then EOS. Loss is taken on
the target tokens and the EOS only. ``loss`` is the mean negative log-likelihood per target
token (nats); ``loss_per_byte`` is the summed NLL of the target tokens (EOS included) divided
by the UTF-8 byte count of the target texts (nats/byte), which is comparable across
tokenizers; ``bits_per_byte = loss_per_byte / ln 2``.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import task

logger = logging.getLogger(__name__)

DEFAULT_LEARNING_RATE = {"lora": 1e-3, "full": 5e-5}
FLOPS_FORMULA = (
    "6 * forward_params * train_tokens (forward 2N + backward 4N per token; forward_params "
    "excludes input-embedding lookups of untied models). For LoRA the backward skips frozen "
    "weight gradients (about 4N in truth), so 6N is an upper estimate kept for comparability."
)
IGNORE_INDEX = -100
_LOAD_LOCK = threading.Lock()
_OOM_MARKERS = ("out of memory", "not enough memory", "can't allocate memory")


class ProbeOutOfMemoryError(RuntimeError):
    """A probe ran out of memory; the message names the probe and the settings to lower."""


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's CUDA ``OutOfMemoryError``, Python's ``MemoryError`` and the CPU
    allocator's ``RuntimeError`` ("DefaultCPUAllocator: not enough memory" / "can't allocate
    memory")."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _OOM_MARKERS)


@contextmanager
def _explain_out_of_memory(
    doing: str, *, device: torch.device, batch_size: int, max_seq_len: int, eval_batch: int
) -> Iterator[None]:
    """Turn an out-of-memory error while ``doing`` into a ``ProbeOutOfMemoryError`` that says
    what to lower; the original error stays chained. Other errors pass through unchanged.
    Never retried: the same probe on the same device runs out of memory again."""
    try:
        yield
    except Exception as err:
        if isinstance(err, ProbeOutOfMemoryError) or not is_out_of_memory(err):
            raise
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ProbeOutOfMemoryError(
            f"out of memory on {device} while {doing} (probe.batch_size={batch_size}, "
            f"probe.max_seq_len={max_seq_len}, evaluation batch {eval_batch}): "
            f"lower probe.batch_size or probe.max_seq_len, e.g. --set probe.batch_size="
            f"{max(1, batch_size // 2)} or --set probe.max_seq_len={max(8, max_seq_len // 2)}, "
            f"or use a smaller candidate [{type(err).__name__}: {detail}]"
        ) from err


# --------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example; ``labels`` is ``IGNORE_INDEX`` on prompt tokens."""

    input_ids: list[int]
    labels: list[int]
    target_bytes: int
    truncated: bool


def _check_examples(examples: list[dict], what: str) -> None:
    if not isinstance(examples, list | tuple):
        raise TypeError(f"{what} must be a list of {{'prompt', 'target'}} dicts.")
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or not isinstance(ex.get("prompt"), str):
            raise ValueError(f"{what}[{i}] must be a dict with str 'prompt' and 'target'.")
        if not isinstance(ex.get("target"), str) or not ex["target"]:
            raise ValueError(f"{what}[{i}] has an empty or missing 'target'; loss needs text.")


def encode_examples(
    tokenizer: Any, examples: list[dict], max_seq_len: int = 64
) -> list[EncodedExample]:
    """Tokenize examples; prompt tokens are masked, the target ends with EOS.

    Sequences over ``max_seq_len`` lose prompt tokens from the left first (one is kept as
    context), then target tokens from the right; those are flagged ``truncated`` and their byte
    count is that of the kept target text.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos_token; targets must end with one.")
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}.")
    encoded = []
    for ex in examples:
        prompt = list(tokenizer(ex["prompt"], add_special_tokens=True)["input_ids"]) or [eos]
        target = list(tokenizer(ex["target"], add_special_tokens=False)["input_ids"]) + [eos]
        n_bytes = len(ex["target"].encode("utf-8"))
        truncated = len(prompt) + len(target) > max_seq_len
        if truncated:
            prompt = prompt[-max(1, max_seq_len - len(target)) :]
            if len(prompt) + len(target) > max_seq_len:
                target = target[: max_seq_len - len(prompt)]
                text = tokenizer.decode([t for t in target if t != eos])
                n_bytes = max(1, len(text.encode("utf-8")))
        encoded.append(
            EncodedExample(
                input_ids=prompt + target,
                labels=[IGNORE_INDEX] * len(prompt) + target,
                target_bytes=n_bytes,
                truncated=truncated,
            )
        )
    return encoded


def collate(encoded: list[EncodedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest sequence: ``input_ids``, ``attention_mask``, ``labels``."""
    width = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def train_batches(
    encoded: list[EncodedExample], batch_size: int, *, seed: int, epoch: int, pad_token_id: int
) -> list[dict[str, torch.Tensor]]:
    """One epoch of shuffled batches; the order depends only on ``seed`` and ``epoch``."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(encoded), generator=generator).tolist()
    return [
        collate([encoded[i] for i in order[start : start + batch_size]], pad_token_id)
        for start in range(0, len(order), batch_size)
    ]


# --------------------------------------------------------------------------------------------
# model and device


def select_device(device: str = "auto") -> tuple[torch.device, torch.dtype | None, str]:
    """``(device, autocast dtype or None, dtype label)``; ``auto`` prefers CUDA."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here.")
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return dev, torch.bfloat16, "bfloat16-autocast"
    return dev, None, "float32"


def configure_cpu(threads: int | None = None) -> int:
    """Set torch's CPU threads (default: the cores this process may use) and flush denormals.

    Both settings are process-wide. Flushing denormals to zero changes no result that matters
    (values below 1e-38) but made LoRA steps of SmolLM2 on CPU 2-4x faster here.
    """
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    n = threads or available or os.cpu_count() or 1
    torch.set_num_threads(n)
    torch.set_flush_denormal(True)
    return n


def forward_param_count(model: torch.nn.Module) -> int:
    """Parameters that do matmul work per token (unique; untied input embeddings excluded)."""
    n = sum(p.numel() for p in model.parameters())
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or inp.weight is not out.weight:
        n -= inp.weight.numel()
    return n


def prepare_model(
    model_dir: str,
    *,
    method: str = "lora",
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: tuple[str, ...] | list[str] = ("q_proj", "v_proj"),
    device: torch.device | str = "cpu",
    seed: int = 0,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any, int]:
    """Load a model folder for training: ``(model, tokenizer, forward_params)``.

    ``method="lora"`` wraps it with a seeded LoRA adapter (only adapter weights train),
    ``"full"`` trains every weight, ``"none"`` loads it frozen for evaluation.
    """

    if method not in ("lora", "full", "none"):
        raise ValueError(f"method must be 'lora' or 'full', got {method!r}.")
    # transformers initialises on the meta device through process-global state: concurrent
    # loads from the probe threads of one flow corrupt each other, so loading is serialised.
    with _LOAD_LOCK:
        return _load_for_training(
            model_dir,
            method=method,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
            device=device,
            seed=seed,
            trust_remote_code=trust_remote_code,
        )


def _load_for_training(
    model_dir,
    *,
    method,
    lora_r,
    lora_alpha,
    lora_dropout,
    target_modules,
    device,
    seed,
    trust_remote_code,
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=torch.float32,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    forward_params = forward_param_count(model)
    torch.manual_seed(seed)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=list(target_modules),
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            # peft calls a transformers method that v5 renamed; the warning is not ours to fix
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            model = get_peft_model(model, config)
    elif method == "none":
        model.requires_grad_(False)
    model.config.use_cache = False
    return model.to(device), tokenizer, forward_params


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def batch_nll(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None
) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over labelled positions (float32) and the number of them."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with _autocast(device, autocast_dtype):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return nll, int((labels != IGNORE_INDEX).sum())


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    autocast_dtype: torch.dtype | None = None,
    max_grad_norm: float | None = 1.0,
) -> float:
    """One optimiser step on the mean target-token loss; returns that loss (may be NaN/inf).

    A non-finite loss is returned without stepping, so the caller can flag divergence.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    nll, n_tokens = batch_nll(model, batch, autocast_dtype)
    loss = nll / max(n_tokens, 1)
    value = float(loss.detach())
    if not math.isfinite(value):
        return value
    loss.backward()
    if max_grad_norm is not None:
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return value


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: list[dict],
    *,
    batch_size: int = 16,
    max_seq_len: int = 64,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float | int]:
    """Loss of ``model`` on the targets of ``examples`` (see the module docstring).

    Returns
    -------
    dict
        ``loss`` (nats/token), ``loss_per_byte`` (nats/byte), ``bits_per_byte``, ``sum_nll``,
        ``n_tokens``, ``n_bytes``, ``n_examples``, ``n_truncated``, ``eval_time_s``. A NaN or
        infinite loss is returned as it is.
    """
    _check_examples(examples, "examples")
    if not examples:
        raise ValueError("evaluate_loss needs at least one example.")
    start = time.perf_counter()
    encoded = encode_examples(tokenizer, examples, max_seq_len)
    # Sorting by length only reduces padding; each example's loss does not depend on its batch.
    encoded_sorted = sorted(encoded, key=lambda e: len(e.input_ids))
    was_training = model.training
    model.eval()
    total, n_tokens = 0.0, 0
    for i in range(0, len(encoded_sorted), batch_size):
        batch = collate(encoded_sorted[i : i + batch_size], _pad_id(tokenizer))
        nll, n = batch_nll(model, batch, autocast_dtype)
        total += float(nll)
        n_tokens += n
    model.train(was_training)
    n_bytes = sum(e.target_bytes for e in encoded)
    per_byte = total / n_bytes
    return {
        "loss": total / n_tokens,
        "loss_per_byte": per_byte,
        "bits_per_byte": per_byte / math.log(2),
        "sum_nll": total,
        "n_tokens": n_tokens,
        "n_bytes": n_bytes,
        "n_examples": len(encoded),
        "n_truncated": sum(e.truncated for e in encoded),
        "eval_time_s": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------------------------
# the probe


def _progress_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_finetuned_model(
    model: torch.nn.Module, tokenizer: Any, save_dir: str, method: str, *, replace: bool = False
) -> str:
    """Save a plain transformers folder (LoRA merged into the weights) atomically.

    An existing non-empty ``save_dir`` is an error unless ``replace`` is true; then the new
    folder is swapped in only once it is complete (a crash leaves the old one in place).
    """
    target = Path(save_dir)
    if target.exists() and any(target.iterdir()) and not replace:
        raise FileExistsError(f"save_dir {target} exists and is not empty; give a new folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is a normal shared folder
    try:
        plain = model.merge_and_unload() if method == "lora" else model
        plain.config.use_cache = True
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target.resolve())


@dataclass
class _TrainOutcome:
    steps: int = 0
    best_step: int = 0
    train_tokens: int = 0
    best_val: float | None = None
    initial_val: float | None = None
    diverged: bool = False
    stopped_early: bool = False
    last_train_loss: float | None = None


def _train(
    model: torch.nn.Module,
    tokenizer: Any,
    train_enc: list[EncodedExample],
    val: list[dict],
    *,
    learning_rate: float,
    total_steps: int,
    batch_size: int,
    max_seq_len: int,
    patience: int | None,
    eval_every: int,
    seed: int,
    autocast_dtype: torch.dtype | None,
    progress: bool,
    history: list[dict],
) -> _TrainOutcome:
    log = _progress_logger()
    out = _TrainOutcome()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)

    def validate() -> float | None:
        if not val:
            return None
        return float(
            evaluate_loss(
                model,
                tokenizer,
                val,
                batch_size=max(batch_size, 16),
                max_seq_len=max_seq_len,
                autocast_dtype=autocast_dtype,
            )["loss"]
        )

    best_state = _snapshot(model) if val else None
    out.best_val = out.initial_val = validate()
    history.append({"step": 0, "val_loss": out.best_val, "train_loss": None})
    log_every = max(1, total_steps // 10)
    bad_evals, epoch, window = 0, 0, []
    while out.steps < total_steps and not (out.diverged or out.stopped_early):
        for batch in train_batches(
            train_enc, batch_size, seed=seed, epoch=epoch, pad_token_id=_pad_id(tokenizer)
        ):
            loss = train_step(model, batch, optimizer, autocast_dtype=autocast_dtype)
            out.steps += 1
            out.train_tokens += int(batch["attention_mask"].sum())
            out.last_train_loss = loss
            window.append(loss)
            if not math.isfinite(loss):
                out.diverged = True
                log.warning("probe diverged: training loss %s at step %d", loss, out.steps)
                break
            if progress and (out.steps % log_every == 0 or out.steps == total_steps):
                log.info("step %d/%d train loss %.4f", out.steps, total_steps, loss)
            if out.steps % eval_every == 0 or out.steps == total_steps:
                val_loss = validate()
                history.append(
                    {
                        "step": out.steps,
                        "val_loss": val_loss,
                        "train_loss": sum(window) / len(window),
                    }
                )
                window = []
                if val_loss is not None:
                    if not math.isfinite(val_loss):
                        out.diverged = True
                        log.warning(
                            "probe diverged: validation loss %s at step %d", val_loss, out.steps
                        )
                        break
                    if progress:
                        log.info(
                            "step %d val loss %.4f (best %.4f at step %d)",
                            out.steps,
                            val_loss,
                            out.best_val,
                            out.best_step,
                        )
                    if val_loss < out.best_val:
                        out.best_val, out.best_step, bad_evals = val_loss, out.steps, 0
                        best_state = _snapshot(model)
                    else:
                        bad_evals += 1
                        if patience is not None and bad_evals >= patience:
                            out.stopped_early = True
                            break
            if out.steps >= total_steps:
                break
        epoch += 1
    if out.diverged:
        # The diverged weights are the result: restoring an earlier state would hide it.
        out.best_step = out.steps
    elif best_state is not None:
        _restore(model, best_state)
    else:
        out.best_step = out.steps
    return out


def run_probe(
    model_dir: str,
    train: list[dict],
    val: list[dict],
    test: list[dict],
    *,
    method: str = "lora",
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: tuple[str, ...] | list[str] = ("q_proj", "v_proj"),
    learning_rate: float | None = None,
    max_steps: int | None = None,
    epochs: int = 3,
    batch_size: int = 8,
    max_seq_len: int = 64,
    early_stopping_patience: int | None = 3,
    eval_every: int | None = None,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    save_dir: str | None = None,
    replace_save_dir: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on ``train`` and measure the mean target-token loss on ``test``.

    Training: AdamW (constant ``learning_rate``, default 1e-3 for LoRA and 5e-5 for full
    fine-tuning, gradient norm clipped at 1), ``epochs`` passes over ``train`` in seeded
    shuffled batches, or exactly ``max_steps`` steps when given (it overrides ``epochs``).
    The validation loss is measured before training and every ``eval_every`` steps (default:
    once per epoch); training stops after ``early_stopping_patience`` evaluations without
    improvement (``None``: never) and the best weights are restored. An empty ``train`` gives
    the zero-shot loss. A NaN/inf training or validation loss stops training with
    ``diverged=True``; the diverged weights are then evaluated as they are (a NaN test loss
    stays NaN). Deterministic for a given ``seed`` on CPU.

    ``flops`` = 6 x ``forward_params`` x ``train_tokens`` (see ``FLOPS_FORMULA``); training
    tokens count prompt and target tokens, not padding.

    ``save_dir``: the fine-tuned model is saved there as a plain transformers folder
    (safetensors + tokenizer; LoRA merged into the weights, so it reloads without the base).
    An existing folder is an error unless ``replace_save_dir`` (the pipeline's deterministic
    per-probe folders are replaced atomically when a probe is recomputed).

    Returns
    -------
    dict
        Plain data: ``test_loss``, ``test_loss_per_byte``, ``test_bits_per_byte``,
        ``zero_shot_val_loss``, ``val_loss``, ``steps``, ``best_step``, ``train_tokens``,
        ``flops``, timings, ``device``, ``dtype``, ``worker`` (host:pid), sizes, ``diverged``,
        ``history`` ...
    """
    start = time.perf_counter()
    for examples, what in ((train, "train"), (val, "val"), (test, "test")):
        _check_examples(examples, what)
    if not test:
        raise ValueError("test is empty: the probe measures the test loss, give test examples.")
    if batch_size < 1 or epochs < 1 or (max_steps is not None and max_steps < 0):
        raise ValueError("batch_size and epochs must be >= 1 and max_steps >= 0.")
    if method not in ("lora", "full"):
        raise ValueError(f"method must be 'lora' or 'full', got {method!r}.")
    lr = DEFAULT_LEARNING_RATE[method] if learning_rate is None else float(learning_rate)
    dev, autocast_dtype, dtype_label = select_device(device)
    n_threads = configure_cpu(threads) if dev.type == "cpu" or threads else None
    name, eval_batch = Path(model_dir).name, max(batch_size, 16)
    oom = functools.partial(
        _explain_out_of_memory,
        device=dev,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        eval_batch=eval_batch,
    )

    with oom(f"loading candidate {name!r}"):
        model, tokenizer, forward_params = prepare_model(
            model_dir,
            method=method if train else "none",
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
            device=dev,
            seed=seed,
            trust_remote_code=trust_remote_code,
        )
    train_enc = encode_examples(tokenizer, train, max_seq_len)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total_steps = (max_steps if max_steps is not None else epochs * steps_per_epoch) if train else 0
    history: list[dict] = []
    t_train = time.perf_counter()
    torch.manual_seed(seed)
    outcome = _TrainOutcome()
    if total_steps:
        with oom(f"fine-tuning candidate {name!r} on {len(train)} examples"):
            outcome = _train(
                model,
                tokenizer,
                train_enc,
                val,
                learning_rate=lr,
                total_steps=total_steps,
                batch_size=batch_size,
                max_seq_len=max_seq_len,
                patience=early_stopping_patience,
                eval_every=eval_every or max(1, steps_per_epoch),
                seed=seed,
                autocast_dtype=autocast_dtype,
                progress=progress,
                history=history,
            )
    train_time = time.perf_counter() - t_train

    t_eval = time.perf_counter()
    eval_kw = {
        "batch_size": eval_batch,
        "max_seq_len": max_seq_len,
        "autocast_dtype": autocast_dtype,
    }
    val_loss = outcome.best_val
    stage = f"{len(train)} examples" if train else "zero-shot"
    with oom(f"evaluating candidate {name!r} ({stage})"):
        if val and not total_steps:
            val_loss = float(evaluate_loss(model, tokenizer, val, **eval_kw)["loss"])
        test_metrics = evaluate_loss(model, tokenizer, test, **eval_kw)
    eval_time = time.perf_counter() - t_eval
    saved = (
        save_finetuned_model(
            model, tokenizer, save_dir, method if train else "none", replace=replace_save_dir
        )
        if save_dir
        else None
    )

    result = {
        "test_loss": test_metrics["loss"],
        "test_loss_per_byte": test_metrics["loss_per_byte"],
        "test_bits_per_byte": test_metrics["bits_per_byte"],
        "test_tokens": test_metrics["n_tokens"],
        "test_bytes": test_metrics["n_bytes"],
        "val_loss": val_loss,
        "zero_shot_val_loss": outcome.initial_val if total_steps else val_loss,
        "train_loss_last": outcome.last_train_loss,
        "steps": outcome.steps,
        "best_step": outcome.best_step,
        "stopped_early": outcome.stopped_early,
        "diverged": outcome.diverged,
        "train_tokens": outcome.train_tokens,
        "forward_params": forward_params,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)
        if total_steps
        else 0,
        "flops": 6.0 * forward_params * outcome.train_tokens,
        "flops_formula": FLOPS_FORMULA,
        "method": method if train else "zero-shot",
        "learning_rate": lr,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "n_truncated_test": test_metrics["n_truncated"],
        "seed": seed,
        "device": str(dev),
        "dtype": dtype_label,
        "threads": n_threads,
        "worker": f"{socket.gethostname()}:{os.getpid()}",  # which process ran it (runners)
        "history": history,
        "save_dir": saved,
        "train_time_s": train_time,
        "eval_time_s": eval_time,
    }
    del model
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    result["wall_time_s"] = time.perf_counter() - start
    return result


# No retries: a probe computes on a resolved local folder, so its failures (bad input, out of
# memory, a bug) repeat on a retry; a diverged or NaN probe is a result, flagged, not an error.
probe_task = task(name="probe")(run_probe)
