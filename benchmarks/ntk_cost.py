"""Cost of the NTK features (section 6 of the design) versus one LoRA probe step.

For each probe-set size n (default 32 and 64 WordNet training examples), on the same model
and LoRA adapter the probes use (r = 8 on q_proj/v_proj, seeded), it times:

* ``kernel``: :func:`lens_model.ntk.empirical_ntk` (per-example gradients of the LoRA weights
  with ``torch.func.vmap(grad)``, float64 Gram matrix);
* ``outputs``: :func:`lens_model.ntk.per_example_outputs` (the residual r0 = f0);
* ``spectrum``: :func:`lens_model.ntk.ntk_spectrum` with ``F(eta, t)``;

and the peak memory above the loaded model during the extraction (CUDA: peak allocated; CPU:
peak resident set size sampled every 5 ms). The reference is one LoRA training step
(``tasks.probing.probe.train_step``, AdamW, batch ``--batch-size`` of the same examples), median of
``--steps`` steps after one warm-up step. Everything runs in one process, one after the other.

    .venv/bin/python benchmarks/ntk_cost.py                   # smollm2-135m-l8 when prepared
    .venv/bin/python benchmarks/ntk_cost.py --model tiny-llama --sizes 8 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import torch  # noqa: E402

from lens_model.ntk import empirical_ntk, ntk_spectrum, per_example_outputs  # noqa: E402
from tasks.data import prepare_data  # noqa: E402
from tasks.models.store import DEFAULT_CACHE_DIR  # noqa: E402
from tasks.records.schema import DataSpec, Ladder, ProbeSpec  # noqa: E402
from tasks.training.finetune import (  # noqa: E402
    collate,
    configure_cpu,
    encode_examples,
    prepare_model,
    train_step,
)
from tasks.training.precision import probe_precision  # noqa: E402


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak, or sampled CPU RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_bytes = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base, self._stop = self._rss(), threading.Event()
            self._max = self.base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._max = max(self._max, self._rss())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._max, self._rss()) - self.base


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def default_model() -> str:
    return "smollm2-135m-l8" if (DEFAULT_CACHE_DIR / "smollm2-135m-l8").is_dir() else "tiny-llama"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=default_model(), help="folder name under .lensllm/models")
    p.add_argument("--models-dir", default=str(DEFAULT_CACHE_DIR))
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="probe-set sizes n")
    p.add_argument("--max-seq-len", type=int, default=40)
    p.add_argument("--chunk-size", type=int, default=8, help="examples per vmapped gradient")
    p.add_argument("--batch-size", type=int, default=8, help="batch of the reference LoRA step")
    p.add_argument("--steps", type=int, default=3, help="timed LoRA steps (median)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--attn", default=None, help="attention implementation, e.g. eager or sdpa")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model_dir = Path(args.models_dir) / args.model
    if not (model_dir / "config.json").is_file():
        raise SystemExit(
            f"no model folder {model_dir}; prepare it first (lensllm models prepare {args.model})"
        )
    # the kernel's cost next to an fp32 training step, the precision the kernel is computed in
    device, precision = probe_precision(ProbeSpec(device=args.device, precision="fp32"))
    autocast_dtype, dtype_label = precision.autocast, precision.label
    threads = configure_cpu(args.threads) if device.type == "cpu" else None
    n_max = max(args.sizes)
    data = prepare_data(
        DataSpec(val_size=8, test_size=8, max_examples=2000), Ladder(first_size=n_max, budget=n_max)
    )
    model, tokenizer, _ = prepare_model(str(model_dir), ProbeSpec(precision="fp32"), device=device)
    if args.attn:
        model.set_attn_implementation(args.attn)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = encode_examples(tokenizer, data.train, args.max_seq_len)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    step_batch = collate(encoded[: args.batch_size], pad)
    step_times = []
    for i in range(args.steps + 1):
        _, seconds = timed(
            lambda: train_step(model, step_batch, optimizer, autocast_dtype=autocast_dtype), device
        )
        if i:  # the first step warms up (allocator, kernels)
            step_times.append(seconds)
    step_s = statistics.median(step_times)
    step_tokens = int(step_batch["attention_mask"].sum())

    print(
        f"model {args.model} on {device} ({dtype_label}, threads {threads}), LoRA r=8 "
        f"q_proj,v_proj ({n_lora:,} trainable parameters), max_seq_len {args.max_seq_len}, "
        f"attention {model.config._attn_implementation}"
    )
    print(
        f"one LoRA probe step (batch {args.batch_size}, {step_tokens} tokens): {step_s:.3f} s "
        f"(median of {args.steps})"
    )
    rows = []
    for n in args.sizes:
        batch = collate(encoded[:n], pad)
        with PeakMemory(device) as mem:
            theta, t_kernel = timed(
                lambda b=batch: empirical_ntk(model, b, chunk_size=args.chunk_size), device
            )
            residual, t_out = timed(
                lambda b=batch: per_example_outputs(model, b, chunk_size=args.chunk_size), device
            )
        spec, t_spec = timed(
            lambda th=theta, r=residual: ntk_spectrum(th, r, eta=1e-3, t=100.0), device
        )
        total = t_kernel + t_out + t_spec
        row = {
            "n": n,
            "tokens": int(batch["attention_mask"].sum()),
            "kernel_s": t_kernel,
            "outputs_s": t_out,
            "spectrum_s": t_spec,
            "total_s": total,
            "peak_mib": mem.peak_bytes / 2**20,
            "lora_steps_equivalent": total / step_s,
            "effective_rank": spec["effective_rank"],
            "f_term": spec["f_term"],
        }
        rows.append(row)
        print(
            f"n={n:3d} ({row['tokens']} tokens): kernel {t_kernel:.2f} s + outputs {t_out:.2f} s "
            f"+ spectrum {t_spec:.4f} s = {total:.2f} s = {row['lora_steps_equivalent']:.1f} LoRA "
            f"steps; peak memory +{row['peak_mib']:.0f} MiB; effective rank "
            f"{spec['effective_rank']:.1f}, F(eta=1e-3, t=100) {spec['f_term']:.3f}"
        )
    return {"step_s": step_s, "rows": rows}


if __name__ == "__main__":
    main()
