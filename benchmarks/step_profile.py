"""Where a bf16 LoRA training step's time goes, and the MFU its matmuls allow.

usage: .venv/bin/python benchmarks/step_profile.py [--model M] [--steps N] [--out FILE]
       (make step-profile; ~2 min; writes benchmarks/results/step_profile.md)

On the compute thread, as a selection trains (``tasks.runtime.compute_threads``), with the
demo's data and probe settings in bf16 with length-bucketed batches (the variant
``benchmarks/throughput.py`` calls "bf16 bucketed"), in one run:

1. untimed warm-up steps, then ``--steps`` timed steps without the profiler (ms per step);
2. the same number of steps under ``torch.profiler``: self time per op, and every matrix
   product (``aten::mm``, ``aten::bmm``) by input shape, with its FLOP/s inside the step;
3. each of the largest products again, alone in a loop, same shapes and dtype (the weight
   operand laid out as ``nn.Linear`` holds it), alternating with the bf16 peak shape of
   ``throughput.py``: the FLOP/s the same product reaches when nothing else runs.

From these: the share of the step in matrix products, and two ceilings on MFU (of the
measured bf16 peak, ``throughput.py``'s FLOP count): if every other op took no time, with the
products as fast as inside the step, and as fast as alone. Profiler overhead inflates the
profiled times; shares are of the profiled total, MFU uses the unprofiled step time. The
profiler starts on the compute thread, so kineto prints one harmless "External init callback
must run in same thread as registerClient" line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "benchmarks"))

import throughput as tp  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

PRODUCTS = ("aten::mm", "aten::bmm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--config", default=str(PROJECT / "configs" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=8, help="timed and profiled steps")
    parser.add_argument("--top", type=int, default=8, help="products re-timed alone")
    parser.add_argument("--threads", type=int, default=None, help="default: every usable core")
    parser.add_argument(
        "--out", default=str(PROJECT / "benchmarks" / "results" / "step_profile.md")
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.top < 1:
        parser.error("--steps and --top must be at least 1")
    return args


def product_flops(name: str, shapes) -> int:
    if name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2 * m * k * n
    (b, m, k), (_, _, n) = shapes[0], shapes[1]
    return 2 * b * m * k * n


def alone(name: str, shapes, repeats: int = 3) -> float:
    """FLOP/s of one product with these shapes in a loop of its own (best of ``repeats``);
    a 2-D right operand is made as the transpose of an ``nn.Linear`` weight."""
    dtype = torch.bfloat16
    a = torch.randn(*shapes[0], dtype=dtype)
    if name == "aten::mm":
        b = torch.randn(shapes[1][1], shapes[1][0], dtype=dtype).t()
        op = torch.mm
    else:
        b = torch.randn(*shapes[1], dtype=dtype)
        op = torch.bmm
    flops = product_flops(name, shapes)
    op(a, b)
    loops = max(3, int(3e8 / flops))
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            op(a, b)
        best = max(best, flops * loops / (time.perf_counter() - start))
    return best


def measure(args: argparse.Namespace, *, threads: int | None) -> str:
    cfg = tp.load_config(args.config)
    threads = tp.configure_cpu(threads)
    model_dir = tp.resolve_candidate(args.model)
    data = tp.prepare_data(cfg.dataset, cfg.ladder, cfg.target_size)
    train = data.train[: data.target_examples]
    spec = cfg.probe.model_copy(update={"device": "cpu", "precision": "bf16"})
    tp.probe_precision(spec)  # a CPU without fast bf16 stops here, with the reason
    tokenizer = tp.prepare_model(model_dir, spec, train=False)[1]
    variant = tp.Variant(
        model_dir, spec, tp.encode_examples(tokenizer, train, spec.max_seq_len), True
    )
    print(f"{args.model}: bf16 bucketed, {threads} threads; warm-up ...", flush=True)
    variant.run(3)
    variant.rounds.clear()
    variant.run(args.steps)
    step = variant.rounds[-1]
    step_s = step["seconds"] / step["steps"]
    print(f"  {1000 * step_s:.0f} ms per step unprofiled; profiling ...", flush=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        variant.run(args.steps)
    profiled = variant.rounds[-1]
    by_op = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total_us = sum(e.self_cpu_time_total for e in by_op)
    products = defaultdict(lambda: [0, 0.0])  # (name, shapes) -> calls, self us
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in PRODUCTS and len(e.input_shapes) >= 2 and e.input_shapes[0]:
            key = (e.key, tuple(tuple(s) for s in e.input_shapes[:2]))
            products[key][0] += e.count
            products[key][1] += e.self_cpu_time_total
    product_us = sum(us for _, us in products.values())
    top = sorted(products.items(), key=lambda kv: -kv[1][1])[: args.top]
    print(f"  re-timing the {len(top)} largest products alone ...", flush=True)
    peak, peak_shape = tp.matmul_peak(torch.bfloat16, 3)
    rows, in_step_flops, in_step_us, alone_us = [], 0, 0.0, 0.0
    for (name, shapes), (calls, us) in top:
        flops = product_flops(name, shapes) * calls
        rate_alone = alone(name, shapes)
        in_step_flops += flops
        in_step_us += us
        alone_us += flops / rate_alone * 1e6
        rows.append((name, shapes, calls / args.steps, us / calls, flops / us / 1e3, rate_alone))
    peak = max(peak, tp.matmul_peak(torch.bfloat16, 3)[0])  # alternated: before and after
    # the step's counted FLOPs (throughput.py) per unprofiled second
    achieved = step["flops"] / step["seconds"]
    share = product_us / total_us
    in_step_rate = in_step_flops / in_step_us * 1e6  # the top products, FLOP/s inside the step
    alone_rate = in_step_flops / alone_us * 1e6
    # every product at the in-step or the alone rate of the top ones, all else free
    product_s = step_s * share
    ceiling_in_step = achieved * step_s / product_s
    ceiling_alone = ceiling_in_step * alone_rate / in_step_rate
    lines = [
        "# Where a bf16 LoRA step's time goes (benchmarks/step_profile.py)",
        "",
        f"{time.strftime('%Y-%m-%d')}, `{args.model}`, the demo's data, bf16 with length-bucketed "
        f"batches, {threads} threads, on the compute thread; {args.steps} steps timed, then "
        f"{args.steps} profiled. Unprofiled: **{1000 * step_s:.0f} ms per step**, "
        f"{achieved / 1e9:.0f} GFLOP/s counted as in throughput.py, **MFU "
        f"{achieved / peak:.1%}** of the measured bf16 peak {peak / 1e9:.0f} GFLOP/s "
        f"({peak_shape}). Profiled: {profiled['seconds'] / profiled['steps'] * 1000:.0f} ms "
        "per step.",
        "",
        "## Self time by op (profiled steps)",
        "",
        "| op | share of the step | calls per step | mean us per call |",
        "|---|---|---|---|",
    ]
    for e in by_op[:14]:
        lines.append(
            f"| `{e.key}` | {e.self_cpu_time_total / total_us:.1%} | "
            f"{e.count / args.steps:.0f} | {e.self_cpu_time_total / e.count:.1f} |"
        )
    lines += [
        "",
        f"Matrix products (`aten::mm`, `aten::bmm`): **{share:.1%}** of the step.",
        "",
        "## The largest products, inside the step and alone",
        "",
        "| op | shapes | calls per step | us per call in the step | GFLOP/s in the step "
        "| GFLOP/s alone | alone / in the step |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, shapes, calls, us, rate_in, rate_alone in rows:
        shape = " @ ".join("x".join(map(str, s)) for s in shapes)
        lines.append(
            f"| `{name}` | {shape} | {calls:.1f} | {us:.0f} | {rate_in:.0f} | "
            f"{rate_alone / 1e9:.0f} | {rate_alone / 1e9 / rate_in:.2f} |"
        )
    lines += [
        "",
        f"These {len(rows)} shapes: {in_step_rate / 1e9:.0f} GFLOP/s inside the step "
        f"({in_step_rate / peak:.0%} of the peak), {alone_rate / 1e9:.0f} GFLOP/s alone "
        f"({alone_rate / peak:.0%}).",
        "",
        "## Ceilings on MFU",
        "",
        "| if every op but the matrix products took no time, with the products | MFU |",
        "|---|---|",
        f"| as fast as inside the step | {ceiling_in_step / peak:.0%} |",
        f"| as fast as alone | {ceiling_alone / peak:.0%} |",
        f"| today (nothing removed) | {achieved / peak:.1%} |",
        "",
    ]
    report = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return report


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    return tp.run_on_compute_thread(measure, args, threads=args.threads)


if __name__ == "__main__":
    main()
