"""Training throughput of one candidate against this machine's own matmul peak.

In one run, alternating so that a change in the machine's load hits every variant alike:

- the matmul peak at fp32 and at bf16 (the best of a few shapes, with the probes' threads);
- LoRA training steps of the candidate on the demo's training examples at its target size, in
  fp32 and in bf16, each with length-bucketed batches (``train_batches``) and with the batches
  padded to their longest member as before (shuffled, not bucketed): tokens/s, achieved
  FLOP/s and MFU (achieved / the measured peak at that dtype);
- a whole probe (``run_probe``: load, validate, train, test) against a bare loop of the same
  training steps, per precision: the probe's overhead.

On a device without fast bf16 (a CPU with neither AMX nor AVX512-BF16), bf16 is left out and
the report says why: fp32 is then measured alone, padded and bucketed, against its own peak.

FLOPs counted (``FLOP_FORMULA``): a LoRA step does the forward (2 FLOPs per weight and token)
and the backward through the frozen weights to the activations (2 more); the frozen weights'
own gradients are never formed and the adapter's are negligible (r = 8). The output layer runs
only on the positions that predict a target token, so it is counted on those:
``4 * body_params * real_tokens + 4 * head_params * target_tokens``, where real tokens exclude
padding (padding is work wasted, so it lowers MFU) and ``body_params`` are the forward
parameters without the output layer. Attention scores (under 3 % at 40 tokens) are left out.

    .venv/bin/python benchmarks/throughput.py                 # the lead's measurement
    .venv/bin/python benchmarks/throughput.py --model tiny-llama --steps 2 --rounds 1 \\
        --probe-size 16 --out /tmp/throughput.md             # a smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROJECT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from flows.config import load_config  # noqa: E402
from tasks.data import prepare_data  # noqa: E402
from tasks.models import resolve_candidate  # noqa: E402
from tasks.probing.probe import run_probe  # noqa: E402
from tasks.records.schema import ProbeData, ProbeSpec  # noqa: E402
from tasks.runtime.compute_threads import run_on_compute_thread  # noqa: E402
from tasks.training.finetune import (  # noqa: E402
    IGNORE_INDEX,
    collate,
    configure_cpu,
    encode_examples,
    pad_id,
    padding_share,
    prepare_model,
    train_batches,
    train_step,
)
from tasks.training.precision import bf16_unavailable, cpu_flags  # noqa: E402

FLOP_FORMULA = (
    "4 x body_params x real_tokens + 4 x head_params x target_tokens per LoRA step (forward 2 "
    "+ backward to the activations 2 per weight and token; no frozen-weight gradients; the "
    "output layer only at target positions; padding not counted)"
)
PEAK_SHAPES = ((512, 576, 1536), (1024, 1024, 1024), (2048, 2048, 2048))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(dtype: torch.dtype, repeats: int) -> tuple[float, str]:
    """The best FLOP/s of a plain matmul over ``PEAK_SHAPES`` and ``repeats`` tries."""
    best, shape = 0.0, ""
    for m, k, n in PEAK_SHAPES:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b  # warm-up (oneDNN picks and caches its kernel)
        loops = max(1, int(2e9 / (2 * m * k * n)))
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(loops):
                a @ b
            rate = 2 * m * k * n * loops / (time.perf_counter() - start)
            if rate > best:
                best, shape = rate, f"{m}x{k} @ {k}x{n}"
    return best, shape


def usable_precisions(base: ProbeSpec) -> tuple[dict[str, ProbeSpec], str | None]:
    """The probe spec of each precision this device can run, and why bf16 is left out (or None).

    fp32 always runs; bf16 only where a selection could use it (``bf16_unavailable``).
    """
    left_out = bf16_unavailable(base)
    names = ["fp32"] if left_out else list(DTYPES)
    return {p: base.model_copy(update={"precision": p}) for p in names}, left_out


def padded_batches(encoded, batch_size: int, *, seed: int, epoch: int, pad_token_id: int):
    """Shuffled batches padded to their longest member, not bucketed (the padding before)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(encoded), generator=generator).tolist()
    return [
        collate([encoded[i] for i in order[s : s + batch_size]], pad_token_id)
        for s in range(0, len(order), batch_size)
    ]


class Variant:
    """One precision and one way of batching: its model, optimizer, batches and timings."""

    def __init__(self, model_dir: str, spec: ProbeSpec, encoded, bucketed: bool):
        self.name = f"{spec.precision} {'bucketed' if bucketed else 'padded'}"
        self.spec, self.bucketed = spec, bucketed
        self.model, tokenizer, self.forward_params = prepare_model(model_dir, spec)
        make = train_batches if bucketed else padded_batches
        self.batches = make(
            encoded, spec.batch_size, seed=0, epoch=0, pad_token_id=pad_id(tokenizer)
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
        head = self.model.get_output_embeddings().weight.numel()
        self.head_params, self.body_params = head, self.forward_params - head
        self.next, self.rounds = 0, []

    def run(self, steps: int) -> None:
        """``steps`` timed training steps on the next batches (cycling through the epoch)."""
        batches = [self.batches[(self.next + i) % len(self.batches)] for i in range(steps)]
        self.next += steps
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        start = time.perf_counter()
        for batch in batches:
            train_step(self.model, batch, self.optimizer)
        seconds = time.perf_counter() - start
        flops = 4 * self.body_params * real + 4 * self.head_params * targets
        self.rounds.append({"seconds": seconds, "steps": steps, "tokens": real, "flops": flops})

    def summary(self, peak: float) -> dict:
        """Median over rounds of the step time, tokens/s and FLOP/s; MFU against ``peak``."""
        per = [(r["seconds"] / r["steps"], r["tokens"] / r["seconds"]) for r in self.rounds]
        flops = statistics.median(r["flops"] / r["seconds"] for r in self.rounds)
        return {
            "variant": self.name,
            "padding": padding_share(self.batches),
            "ms_per_step": 1000 * statistics.median(s for s, _ in per),
            "tokens_per_s": statistics.median(t for _, t in per),
            "flops_per_s": flops,
            "mfu": flops / peak,
        }


def probe_overhead(model_dir: str, data, spec: ProbeSpec, threads: int) -> dict:
    """A whole probe against a bare loop of the same training steps (same batches)."""
    res = run_probe(model_dir, data, spec, threads=threads, progress=False)
    model, tokenizer, _ = prepare_model(model_dir, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    encoded = encode_examples(tokenizer, data.train, spec.max_seq_len)
    batches, epoch = [], 0
    while len(batches) < res.steps:
        batches += train_batches(
            encoded, spec.batch_size, seed=spec.seed, epoch=epoch, pad_token_id=pad_id(tokenizer)
        )
        epoch += 1
    torch.manual_seed(spec.seed)
    start = time.perf_counter()
    for batch in batches[: res.steps]:
        train_step(model, batch, optimizer)
    bare = time.perf_counter() - start
    return {
        "precision": spec.precision,
        "steps": res.steps,
        "probe_s": res.wall_time_s,
        "train_s": res.train_time_s,
        "bare_s": bare,
        "ratio": res.wall_time_s / bare,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--config", default=str(PROJECT / "configs" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of all variants")
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--probe-size", type=int, default=128, help="examples of the probe")
    parser.add_argument("--threads", type=int, default=None, help="default: every usable core")
    parser.add_argument("--out", default=str(PROJECT / "benchmarks" / "results" / "throughput.md"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.probe_size < 1:
        parser.error("--steps, --rounds and --probe-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # on the compute thread, as a selection's torch work runs (tasks.runtime.compute_threads)
    return run_on_compute_thread(measure, args, threads=args.threads)


def measure(args: argparse.Namespace, *, threads: int | None) -> dict:
    cfg = load_config(args.config)
    threads = configure_cpu(threads)
    model_dir = resolve_candidate(args.model)
    data = prepare_data(cfg.dataset, cfg.ladder, cfg.target_size)
    train = data.train[: data.target_examples]
    base = cfg.probe.model_copy(update={"device": "cpu"})
    specs, left_out = usable_precisions(base)
    if left_out:
        print(f"bf16 left out: {left_out}", flush=True)
    print(f"{args.model}, {len(train)} examples, {threads} threads; peaks ...", flush=True)
    peaks = {}
    for _ in range(2):  # alternating, the best of both passes
        for name in specs:
            dtype = DTYPES[name]
            rate, shape = matmul_peak(dtype, args.peak_repeats)
            if rate > peaks.get(name, (0.0, ""))[0]:
                peaks[name] = (rate, shape)
    tokenizer = prepare_model(model_dir, specs["fp32"], train=False)[1]
    encoded = encode_examples(tokenizer, train, base.max_seq_len)
    variants = [Variant(model_dir, specs[p], encoded, b) for p in specs for b in (False, True)]
    for v in variants:
        v.run(1)  # warm-up, untimed
        v.rounds.clear()
    for r in range(args.rounds):
        for v in variants:
            v.run(args.steps)
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    rows = [v.summary(peaks[v.spec.precision][0]) for v in variants]
    del variants
    probe_data = ProbeData(
        source=data.source, train=train[: args.probe_size], val=data.val, test=data.test
    )
    overhead = [probe_overhead(model_dir, probe_data, specs[p], threads) for p in specs]
    report = markdown(args, threads, len(train), peaks, rows, overhead, left_out)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return {"peaks": peaks, "rows": rows, "overhead": overhead, "left_out": left_out}


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
    return names[0] if names else platform.machine()


def markdown(
    args, threads: int, n_train: int, peaks: dict, rows: list, overhead: list, left_out: str | None
) -> str:
    flags = " ".join(sorted(cpu_flags() & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"}))
    lines = [
        "# Training throughput (benchmarks/throughput.py)",
        "",
        f"`{' '.join(['benchmarks/throughput.py', *sys.argv[1:]])}` on {cpu_name()} "
        f"({flags or 'no AVX512/AMX flags'}), torch {torch.__version__}, {threads} threads.",
        f"LoRA on `{args.model}`, {n_train} examples of `{Path(args.config).name}`, "
        f"{args.rounds} rounds x {args.steps} steps per variant, alternating; medians.",
        *([f"bf16 left out, this device cannot run it fast: {left_out}"] if left_out else []),
        "",
        "| dtype | measured matmul peak | shape |",
        "|---|---|---|",
        *(f"| {d} | {r / 1e9:.0f} GFLOP/s | {s} |" for d, (r, s) in peaks.items()),
        "",
        "| variant | padding | ms/step | tokens/s | GFLOP/s | MFU |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['variant']} | {100 * r['padding']:.1f} % | {r['ms_per_step']:.0f} | "
            f"{r['tokens_per_s']:.0f} | {r['flops_per_s'] / 1e9:.1f} | {100 * r['mfu']:.1f} % |"
            for r in rows
        ),
        "",
        f"FLOPs: {FLOP_FORMULA}.",
        "",
        f"Probe overhead ({args.probe_size} examples; a whole `run_probe` against a bare loop of "
        "its training steps on the same batches):",
        "",
        "| precision | steps | probe (s) | its training (s) | bare loop (s) | probe / bare |",
        "|---|---|---|---|---|---|",
        *(
            f"| {o['precision']} | {o['steps']} | {o['probe_s']:.1f} | {o['train_s']:.1f} | "
            f"{o['bare_s']:.1f} | {o['ratio']:.2f} |"
            for o in overhead
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
