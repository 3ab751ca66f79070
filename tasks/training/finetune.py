"""Training building blocks shared by probes, target training and the NTK features.

They are public so that a bare PyTorch loop (``benchmarks/probe_overhead.py``) runs exactly the
same steps as :func:`tasks.probing.probe.run_probe`.

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

import gc
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tasks.records.errors import ProbeOutOfMemoryError
from tasks.records.schema import ProbeSpec
from tasks.runtime.compute_threads import local_cores
from tasks.runtime.construction import model_construction
from tasks.training.precision import probe_precision

logger = logging.getLogger(__name__)

FLOPS_FORMULA = (
    "6 * forward_params * train_tokens (forward 2N + backward 4N per token; forward_params "
    "excludes input-embedding lookups of untied models). For LoRA the backward skips frozen "
    "weight gradients (about 4N in truth), so 6N is an upper estimate kept for comparability."
)
IGNORE_INDEX = -100
# Batches per length-sorted window of an epoch (train_batches): 64 x 8 examples cover a whole
# epoch of every probe of the demo, which leaves under 1 % padding, and longer epochs still mix.
BUCKET_BATCHES = 64


_OOM_MARKERS = ("out of memory", "not enough memory", "can't allocate memory")


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's CUDA ``OutOfMemoryError``, Python's ``MemoryError`` and the CPU
    allocator's ``RuntimeError`` ("DefaultCPUAllocator: not enough memory" / "can't allocate
    memory")."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _OOM_MARKERS)


@contextmanager
def explain_out_of_memory(
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


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example; ``labels`` is ``IGNORE_INDEX`` on prompt tokens."""

    input_ids: list[int]
    labels: list[int]
    target_bytes: int
    truncated: bool


def check_examples(examples: list[dict], what: str) -> None:
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
    """One epoch of shuffled, length-bucketed batches; the order depends only on ``seed`` and
    ``epoch``.

    The shuffled epoch is cut into windows of ``BUCKET_BATCHES`` batches; within a window the
    examples are sorted by length (equal lengths keep their shuffled order) and cut into batches,
    and the window's batches are shuffled. A batch is then padded only to its own longest
    member, which is close to its shortest. Each example's loss is the same in any batch (right
    padding, causal attention, padded positions masked); only which examples share a step
    changes.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(encoded), generator=generator).tolist()
    window = BUCKET_BATCHES * batch_size
    batches = []
    for start in range(0, len(order), window):
        rows = sorted(order[start : start + window], key=lambda i: len(encoded[i].input_ids))
        cut = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        shuffle = torch.randperm(len(cut), generator=generator).tolist()
        batches += [collate([encoded[i] for i in cut[j]], pad_token_id) for j in shuffle]
    return batches


def padding_share(batches: list[dict[str, torch.Tensor]]) -> float:
    """The share of the batches' token positions that are padding."""
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["attention_mask"].numel() for b in batches)
    return 1.0 - real / total if total else 0.0


def configure_cpu(threads: int | None = None) -> int:
    """Set torch's CPU threads (default: the cores this process may use) and flush denormals.

    Both settings are process-wide. Flushing denormals to zero changes no result that matters
    (values below 1e-38) but made LoRA steps of SmolLM2 on CPU 2-4x faster here.
    """
    n = threads or local_cores()
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
    spec: ProbeSpec,
    *,
    train: bool = True,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any, int]:
    """Load a model folder for training: ``(model, tokenizer, forward_params)``.

    With ``train`` and ``spec.method == "lora"`` the model is wrapped with a LoRA adapter
    seeded by ``spec.seed`` (only adapter weights train); ``"full"`` trains every weight.
    ``train=False`` loads it frozen for evaluation (the zero-shot probe).
    """
    # transformers builds models through process-global state (tasks.runtime.construction)
    with model_construction():
        return _load(model_dir, spec, train, device, trust_remote_code)


def _load(model_dir, spec: ProbeSpec, train: bool, device, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=probe_precision(spec)[1].weights,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        **attention_choice(spec),
    )
    forward_params = forward_param_count(model)
    torch.manual_seed(spec.seed)
    if train and spec.method == "lora":
        from peft import get_peft_model

        with warnings.catch_warnings():
            # peft calls a transformers method that v5 renamed; the warning is not ours to fix
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            # autocast_adapter_dtype: the adapter stays fp32 over bf16 base weights
            model = get_peft_model(model, spec.lora_config(), autocast_adapter_dtype=True)
    elif not train:
        model.requires_grad_(False)
    model.config.use_cache = False
    return model.to(device), tokenizer, forward_params


EAGER_ATTENTION_MAX_LEN = 256


def attention_choice(spec: ProbeSpec) -> dict[str, str]:
    """``attn_implementation`` for ``from_pretrained``: eager attention for bf16 on a CPU with
    short sequences (``probe.max_seq_len`` up to ``EAGER_ATTENTION_MAX_LEN``), else the
    model's default (SDPA).

    Why: profiling a bf16 LoRA step of SmolLM2-135M (batch 8, about 22 tokens) on the CPU, the
    SDPA flash kernel's backward took a quarter of the step; with eager attention the step was
    about 25 % shorter (benchmarks/throughput.py). Eager attention's softmax is fp32 and its
    memory grows with the square of the length, hence the bound; longer sequences keep SDPA.
    """
    device, precision = probe_precision(spec)
    short = spec.max_seq_len <= EAGER_ATTENTION_MAX_LEN
    if device.type == "cpu" and precision.name == "bf16" and short:
        return {"attn_implementation": "eager"}
    return {}


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _target_nll(model, batch, autocast_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL of every labelled position (float32, in row-major order) and the batch
    row of each.

    Only those positions reach the output layer: a forward pre-hook on it keeps the hidden
    states that predict a labelled token, so no logits over the vocabulary are computed for
    the prompt or the padding (for SmolLM2 a 576 x 49k matmul and a 49k-way softmax per
    position). What a model does after its output layer (e.g. Gemma's logit soft-capping) is
    elementwise and applies to the kept positions alike.
    """
    device = next(model.parameters()).device
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    rows, targets = keep.nonzero()[:, 0], labels[keep]
    keep_on_device = keep.to(device)

    def select(_module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != batch["labels"].shape:
            return None
        return (hidden[:, :-1][keep_on_device].unsqueeze(0), *args[1:])

    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(select) if head is not None else None
    try:
        with _autocast(device, autocast_dtype):
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits
    finally:
        if hook is not None:
            hook.remove()
    # kept positions come back as one row of at most T-1; a full (B, T) means no hook applied
    full = logits.dim() == 3 and logits.shape[:2] == batch["labels"].shape
    logits = logits[:, :-1][keep_on_device] if full else logits[0]
    nll = torch.nn.functional.cross_entropy(logits.float(), targets.to(device), reduction="none")
    return nll, rows


def batch_nll(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None
) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over labelled positions (float32) and the number of them."""
    nll, rows = _target_nll(model, batch, autocast_dtype)
    return nll.sum(), len(rows)


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
    per_example: bool = False,
) -> dict[str, Any]:
    """Loss of ``model`` on the targets of ``examples`` (see the module docstring).

    Returns
    -------
    dict
        ``loss`` (nats/token), ``loss_per_byte`` (nats/byte), ``bits_per_byte``, ``sum_nll``,
        ``n_tokens``, ``n_bytes``, ``n_examples``, ``n_truncated``, ``eval_time_s``; with
        ``per_example``, also ``example_nll``, ``example_bytes`` and ``example_tokens`` (target
        tokens, EOS included) in the order of
        ``examples`` (what a paired comparison of two models on the same examples needs). A
        NaN or infinite loss is returned as it is.
    """
    check_examples(examples, "examples")
    if not examples:
        raise ValueError("evaluate_loss needs at least one example.")
    start = time.perf_counter()
    encoded = encode_examples(tokenizer, examples, max_seq_len)
    # Sorting by length only reduces padding; each example's loss does not depend on its batch.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    was_training = model.training
    model.eval()
    total, n_tokens = 0.0, 0
    example_nll = [0.0] * len(encoded)
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        batch = collate([encoded[r] for r in rows], pad_id(tokenizer))
        nll, n, per_row = _batch_nll_rows(model, batch, autocast_dtype, per_example)
        total += float(nll)
        n_tokens += n
        for r, value in zip(rows, per_row, strict=True):
            example_nll[r] = value
    model.train(was_training)
    n_bytes = sum(e.target_bytes for e in encoded)
    per_byte = total / n_bytes
    out = {
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
    if per_example:
        out["example_nll"] = example_nll
        out["example_bytes"] = [e.target_bytes for e in encoded]
        out["example_tokens"] = [sum(t != IGNORE_INDEX for t in e.labels[1:]) for e in encoded]
    return out


def _batch_nll_rows(model, batch, autocast_dtype, per_example: bool):
    """:func:`batch_nll`, plus each row's summed NLL when ``per_example`` (else zeros)."""
    nll, rows = _target_nll(model, batch, autocast_dtype)
    n_rows = len(batch["input_ids"])
    if not per_example:
        return nll.sum(), len(rows), [0.0] * n_rows
    per_row = torch.zeros(n_rows, dtype=nll.dtype, device=nll.device)
    per_row.index_add_(0, rows.to(nll.device), nll)
    return nll.sum(), len(rows), per_row.tolist()


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
    """Save a plain transformers folder (LoRA merged into the weights, fp32) atomically.

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
        # merged in fp32 and saved fp32: bf16 base weights widen exactly, and the adapter's
        # update is not rounded to bf16 at the base weights' scale
        model = model.to(torch.float32)
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


def progress_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run, else this module's logger."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


@dataclass
class TrainOutcome:
    """What a fine-tuning run did: steps (to early stopping), tokens, validation losses."""

    steps: int = 0
    best_step: int = 0
    train_tokens: int = 0
    best_val: float | None = None
    initial_val: float | None = None
    diverged: bool = False
    stopped_early: bool = False
    last_train_loss: float | None = None
    history: list[dict] = field(default_factory=list)


def fine_tune(
    model: torch.nn.Module,
    tokenizer: Any,
    train: list[EncodedExample],
    val: list[dict],
    spec: ProbeSpec,
    *,
    total_steps: int,
    eval_every: int,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train ``model`` with ``spec``'s recipe (see :class:`~tasks.records.schema.ProbeSpec`).

    The validation loss is measured before training and every ``eval_every`` steps; after
    ``spec.early_stopping_patience`` evaluations without improvement training stops and the
    best weights are restored. A NaN/inf training or validation loss stops training with
    ``diverged=True`` and keeps the diverged weights (restoring would hide it).
    """
    loop = _TrainingLoop(model, tokenizer, val, spec, autocast_dtype, progress, total_steps)
    return loop.run(train, eval_every)


class _TrainingLoop:
    """One fine-tuning run: AdamW steps, periodic validation, early stopping, best weights."""

    def __init__(self, model, tokenizer, val, spec: ProbeSpec, autocast_dtype, progress, total):
        self.model, self.tokenizer, self.val, self.spec = model, tokenizer, val, spec
        self.autocast_dtype, self.progress, self.total_steps = autocast_dtype, progress, total
        self.log = progress_logger()
        self.out = TrainOutcome()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
        self.log_every = max(1, total // 10)
        self.bad_evals = 0
        self.best_state = None

    def validate(self) -> float | None:
        if not self.val:
            return None
        metrics = evaluate_loss(
            self.model,
            self.tokenizer,
            self.val,
            batch_size=self.spec.eval_batch_size,
            max_seq_len=self.spec.max_seq_len,
            autocast_dtype=self.autocast_dtype,
        )
        return float(metrics["loss"])

    def run(self, train: list[EncodedExample], eval_every: int) -> TrainOutcome:
        out = self.out
        self.best_state = _snapshot(self.model) if self.val else None
        out.best_val = out.initial_val = self.validate()
        out.history.append({"step": 0, "val_loss": out.best_val, "train_loss": None})
        epoch, window = 0, []
        pad = pad_id(self.tokenizer)
        while out.steps < self.total_steps and not (out.diverged or out.stopped_early):
            batches = train_batches(
                train, self.spec.batch_size, seed=self.spec.seed, epoch=epoch, pad_token_id=pad
            )
            for batch in batches:
                if not self._step(batch, window):
                    break
                if out.steps % eval_every == 0 or out.steps == self.total_steps:
                    stop = self._evaluate(window)
                    window = []
                    if stop:
                        break
                if out.steps >= self.total_steps:
                    break
            epoch += 1
        if out.diverged or self.best_state is None:
            out.best_step = out.steps
        else:
            _restore(self.model, self.best_state)
        return out

    def _step(self, batch: dict[str, torch.Tensor], window: list[float]) -> bool:
        """One optimiser step; False when the training loss diverged."""
        out = self.out
        loss = train_step(self.model, batch, self.optimizer, autocast_dtype=self.autocast_dtype)
        out.steps += 1
        out.train_tokens += int(batch["attention_mask"].sum())
        out.last_train_loss = loss
        window.append(loss)
        if not math.isfinite(loss):
            out.diverged = True
            self.log.warning("probe diverged: training loss %s at step %d", loss, out.steps)
            return False
        if self.progress and (out.steps % self.log_every == 0 or out.steps == self.total_steps):
            self.log.info("step %d/%d train loss %.4f", out.steps, self.total_steps, loss)
        return True

    def _evaluate(self, window: list[float]) -> bool:
        """Validate, record, keep the best weights; True when training should stop."""
        out = self.out
        val_loss = self.validate()
        train_loss = sum(window) / len(window)
        out.history.append({"step": out.steps, "val_loss": val_loss, "train_loss": train_loss})
        if val_loss is None:
            return False
        if not math.isfinite(val_loss):
            out.diverged = True
            self.log.warning("probe diverged: validation loss %s at step %d", val_loss, out.steps)
            return True
        improved = val_loss < out.best_val
        if self.progress:
            self.log.info(
                "step %d val loss %.4f (%s)",
                out.steps,
                val_loss,
                "best so far" if improved else f"best {out.best_val:.4f} at step {out.best_step}",
            )
        if improved:
            out.best_val, out.best_step, self.bad_evals = val_loss, out.steps, 0
            self.best_state = _snapshot(self.model)
            return False
        self.bad_evals += 1
        patience = self.spec.early_stopping_patience
        if patience is not None and self.bad_evals >= patience:
            out.stopped_early = True
            return True
        return False
