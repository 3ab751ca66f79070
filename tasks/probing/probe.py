"""Probe: fine-tune one candidate on one training subset and measure its test loss.

The recipe is a :class:`~tasks.records.schema.ProbeSpec`, the data a
:class:`~tasks.records.schema.ProbeData`
(a subset plus the fixed validation and test splits), the result a
:class:`~tasks.records.schema.ProbeResult`. The same function trains the winner at the target size
(a larger subset, the same recipe), so the measured loss is exactly the predicted quantity.
The steps (encoding, the training loop, the loss) are in :mod:`tasks.training.finetune`.
"""

from __future__ import annotations

import functools
import gc
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from prefect import task

from tasks.records.schema import ProbeData, ProbeResult, ProbeSpec
from tasks.runtime.compute_threads import run_on_compute_thread
from tasks.training.finetune import (
    TrainOutcome,
    check_examples,
    configure_cpu,
    encode_examples,
    evaluate_loss,
    explain_out_of_memory,
    fine_tune,
    prepare_model,
    save_finetuned_model,
)
from tasks.training.precision import probe_precision


def run_probe(
    model_dir: str,
    data: ProbeData,
    spec: ProbeSpec,
    *,
    candidate: str | None = None,
    threads: int | None = None,
    save_dir: str | None = None,
    replace_save_dir: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> ProbeResult:
    """Fine-tune ``model_dir`` on ``data.train`` with ``spec`` and measure the test loss.

    An empty ``data.train`` gives the zero-shot loss. A NaN/inf training or validation loss
    stops training with ``diverged=True``; the diverged weights are then evaluated as they are
    (a NaN test loss stays NaN). Deterministic for a given ``spec.seed`` on CPU; ``threads``
    (torch CPU threads) changes the speed, not the result. ``spec.precision`` (``auto`` resolved
    on the probe's device, :mod:`tasks.training.precision`) is the number format of training
    and evaluation alike.

    ``save_dir``: the fine-tuned model is saved there as a plain transformers folder
    (safetensors + tokenizer; LoRA merged into the weights, so it reloads without the base).
    An existing folder is an error unless ``replace_save_dir`` (the pipeline's deterministic
    per-probe folders are replaced atomically when a probe is recomputed).
    """
    return run_on_compute_thread(
        _probe,
        model_dir,
        data,
        spec,
        candidate=candidate,
        threads=threads,
        save_dir=save_dir,
        replace_save_dir=replace_save_dir,
        progress=progress,
        trust_remote_code=trust_remote_code,
    )


def _probe(
    model_dir: str,
    data: ProbeData,
    spec: ProbeSpec,
    *,
    candidate: str | None,
    threads: int | None,
    save_dir: str | None,
    replace_save_dir: bool,
    progress: bool,
    trust_remote_code: bool,
) -> ProbeResult:
    """:func:`run_probe`'s work, on a compute thread (:mod:`tasks.runtime.compute_threads`)."""
    start = time.perf_counter()
    for examples, what in ((data.train, "train"), (data.val, "val"), (data.test, "test")):
        check_examples(examples, what)
    if not data.test:
        raise ValueError("test is empty: the probe measures the test loss, give test examples.")
    run = _ProbeRun(model_dir, data, spec, candidate or Path(model_dir).name, threads)
    run.load(trust_remote_code)
    outcome = run.train(progress)
    test, val_loss = run.evaluate(outcome)
    saved = None
    if save_dir:
        method = spec.method if outcome else "none"
        saved = save_finetuned_model(
            run.model, run.tokenizer, save_dir, method, replace=replace_save_dir
        )
    return run.result(outcome, test, val_loss, saved, started=start)


class _ProbeRun:
    """The state of one probe between its steps: device, model, timings."""

    def __init__(self, model_dir, data: ProbeData, spec: ProbeSpec, name: str, threads):
        self.model_dir, self.data, self.spec, self.name = model_dir, data, spec, name
        self.device, self.precision = probe_precision(spec)
        self.autocast_dtype = self.precision.autocast
        cpu = self.device.type == "cpu"
        self.threads = configure_cpu(threads) if cpu or threads else None
        self.oom = functools.partial(
            explain_out_of_memory,
            device=self.device,
            batch_size=spec.batch_size,
            max_seq_len=spec.max_seq_len,
            eval_batch=spec.eval_batch_size,
        )
        self.train_time = self.eval_time = 0.0

    def load(self, trust_remote_code: bool) -> None:
        with self.oom(f"loading candidate {self.name!r}"):
            self.model, self.tokenizer, self.forward_params = prepare_model(
                self.model_dir,
                self.spec,
                train=bool(self.data.train),
                device=self.device,
                trust_remote_code=trust_remote_code,
            )

    def train(self, progress: bool) -> TrainOutcome | None:
        """Fine-tune on the subset (None for the zero-shot probe)."""
        spec, train = self.spec, self.data.train
        if not train:
            return None
        steps_per_epoch = math.ceil(len(train) / spec.batch_size)
        start = time.perf_counter()
        torch.manual_seed(spec.seed)
        with self.oom(f"fine-tuning candidate {self.name!r} on {len(train)} examples"):
            outcome = fine_tune(
                self.model,
                self.tokenizer,
                encode_examples(self.tokenizer, train, spec.max_seq_len),
                self.data.val,
                spec,
                total_steps=spec.max_steps or spec.epochs * steps_per_epoch,
                eval_every=spec.eval_every or max(1, steps_per_epoch),
                autocast_dtype=self.autocast_dtype,
                progress=progress,
            )
        self.train_time = time.perf_counter() - start
        return outcome

    def evaluate(self, outcome: TrainOutcome | None) -> tuple[dict, float | None]:
        """Test metrics, and the validation loss (the best one seen in training)."""
        start = time.perf_counter()
        kw = {
            "batch_size": self.spec.eval_batch_size,
            "max_seq_len": self.spec.max_seq_len,
            "autocast_dtype": self.autocast_dtype,
        }
        val_loss = outcome.best_val if outcome else None
        stage = f"{len(self.data.train)} examples" if outcome else "zero-shot"
        with self.oom(f"evaluating candidate {self.name!r} ({stage})"):
            if self.data.val and outcome is None:
                val_loss = float(
                    evaluate_loss(self.model, self.tokenizer, self.data.val, **kw)["loss"]
                )
            test = evaluate_loss(self.model, self.tokenizer, self.data.test, per_example=True, **kw)
        self.eval_time = time.perf_counter() - start
        return test, val_loss

    def result(self, outcome, test: dict, val_loss, saved: str | None, *, started: float):
        """The :class:`ProbeResult`; frees the model."""
        out = outcome or TrainOutcome()
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        del self.model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        data = self.data
        return ProbeResult(
            candidate=self.name,
            size=len(data.train),
            train_fingerprint=data.train_fingerprint,
            test_fingerprint=data.test_fingerprint,
            test_loss=test["loss"],
            test_loss_per_byte=test["loss_per_byte"],
            test_bits_per_byte=test["bits_per_byte"],
            test_tokens=test["n_tokens"],
            test_bytes=test["n_bytes"],
            val_loss=val_loss,
            zero_shot_val_loss=out.initial_val if outcome else val_loss,
            train_loss_last=out.last_train_loss,
            steps=out.steps,
            best_step=out.best_step,
            stopped_early=out.stopped_early,
            diverged=out.diverged,
            train_tokens=out.train_tokens,
            forward_params=self.forward_params,
            trainable_params=trainable if outcome else 0,
            flops=6.0 * self.forward_params * out.train_tokens,
            method=self.spec.method if outcome else "zero-shot",
            learning_rate=self.spec.learning_rate,
            n_train=len(data.train),
            n_val=len(data.val),
            n_test=len(data.test),
            n_truncated_test=test["n_truncated"],
            seed=self.spec.seed,
            device=str(self.device),
            dtype=self.precision.label,
            precision=self.precision.name,
            threads=self.threads,
            worker=f"{socket.gethostname()}:{os.getpid()}",  # which process ran it (runners)
            history=out.history,
            test_example_nll=test["example_nll"],
            test_example_bytes=test["example_bytes"],
            test_example_tokens=test["example_tokens"],
            save_dir=saved,
            train_time_s=self.train_time,
            eval_time_s=self.eval_time,
            wall_time_s=time.perf_counter() - started,
        )


def probe_run_name(verb: str, parameters: dict[str, Any]) -> str:
    """The Prefect task-run name of a probe: ``probe smollm2-135m @ 64`` (``verb`` "train" for
    the training at the target). A module-level function bound with ``functools.partial`` so
    that Dask and Ray workers can unpickle the task."""
    candidate = parameters.get("candidate") or Path(parameters["model_dir"]).name
    return f"{verb} {candidate} @ {len(parameters['data'].train)}"


# No retries: a probe computes on a resolved local folder, so its failures (bad input, out of
# memory, a bug) repeat on a retry; a diverged or NaN probe is a result, flagged, not an error.
probe_task = task(name="probe", task_run_name=functools.partial(probe_run_name, "probe"))(run_probe)
