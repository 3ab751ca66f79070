"""Why a selection's torch work runs on one long-lived thread (tasks.runtime.compute_threads).

A selection trains in two stages on different threads: the probes on the select flow's
task-runner thread, then the winner at the target on the train flow's (a new thread), while the
first thread lives on, idle. This script times bf16 LoRA steps of the second stage in a fresh
process per arrangement, alternating the arrangements round by round:

- ``separate threads``: stage 1 on one thread that stays alive, stage 2 on a new thread (the
  pipeline before compute threads);
- ``compute thread``: both stages through ``run_on_compute_thread`` (the pipeline now);
- ``main thread``: both stages on the main thread (a bare script, the reference).

It writes a markdown table to ``benchmarks/results/thread_arrangements.md``.

    .venv/bin/python benchmarks/thread_arrangements.py            # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROJECT = Path(__file__).resolve().parents[1]
ARRANGEMENTS = ("separate threads", "compute thread", "main thread")


def _stage(setup: dict, steps: int, *, threads: int | None) -> float:
    """ms per training step over ``steps`` steps (after one untimed)."""
    from tasks.training.finetune import configure_cpu, train_step

    configure_cpu(threads)
    model, batches, opt = setup["model"], setup["batches"], setup["opt"]
    train_step(model, batches[0], opt)
    start = time.perf_counter()
    for batch in batches[1 : steps + 1]:
        train_step(model, batch, opt)
    return (time.perf_counter() - start) / steps * 1000


def child(arrangement: str, model_name: str, steps: int, threads: int | None) -> dict:
    """One arrangement in this (fresh) process: ms/step of stage 1 and of stage 2."""
    import torch

    from flows.config import load_config
    from tasks.data import prepare_data
    from tasks.models import resolve_candidate
    from tasks.runtime.compute_threads import run_on_compute_thread
    from tasks.training.finetune import encode_examples, pad_id, prepare_model, train_batches

    cfg = load_config(str(PROJECT / "configs" / "demo.yaml"))
    data = prepare_data(cfg.dataset, cfg.ladder, cfg.target_size)
    spec = cfg.probe.model_copy(update={"device": "cpu", "precision": "bf16"})
    model, tok, _ = prepare_model(resolve_candidate(model_name), spec)
    encoded = encode_examples(tok, data.train[: data.target_examples], spec.max_seq_len)
    batches = train_batches(encoded, spec.batch_size, seed=0, epoch=0, pad_token_id=pad_id(tok))
    setup = {
        "model": model,
        "batches": batches,
        "opt": torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3),
    }
    if arrangement == "main thread":
        times = [_stage(setup, steps, threads=threads) for _ in range(2)]
    elif arrangement == "compute thread":
        times = [run_on_compute_thread(_stage, setup, steps, threads=threads) for _ in range(2)]
    else:
        times, idle = [], threading.Event()

        def first():
            times.append(_stage(setup, steps, threads=threads))
            idle.wait()  # alive and idle, like a task runner's thread, while stage 2 runs

        def second():
            times.append(_stage(setup, steps, threads=threads))

        t1 = threading.Thread(target=first)
        t1.start()
        while not times:
            time.sleep(0.05)
        t2 = threading.Thread(target=second)
        t2.start()
        t2.join()
        idle.set()
        t1.join()
    return {"stage 1": times[0], "stage 2": times[1]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per stage")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: every usable core")
    parser.add_argument("--out", default=str(PROJECT / "benchmarks/results/thread_arrangements.md"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model, args.steps, args.threads)))
        return {}
    results: dict[str, list[dict]] = {a: [] for a in ARRANGEMENTS}
    for r in range(args.rounds):
        for arrangement in ARRANGEMENTS:
            cmd = [sys.executable, __file__, "--child", arrangement, "--model", args.model]
            cmd += ["--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=PROJECT)
            line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
            results[arrangement].append(json.loads(line[len("RESULT ") :]))
            print(f"round {r + 1}: {arrangement}: {results[arrangement][-1]}", flush=True)
    report = markdown(args, results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return results


def markdown(args: argparse.Namespace, results: dict[str, list[dict]]) -> str:
    sys.path.insert(0, str(PROJECT / "benchmarks"))
    from throughput import cpu_name

    med = {a: {s: statistics.median(r[s] for r in rs) for s in rs[0]} for a, rs in results.items()}
    ref = med["main thread"]["stage 2"]
    lines = [
        "# A selection's torch work on one thread: bf16 LoRA step times",
        "",
        f"`benchmarks/thread_arrangements.py`, {time.strftime('%Y-%m-%d')}, {cpu_name()}, "
        f"{os.cpu_count()} cores, {platform.python_version()}; {args.model}, the demo's batches "
        f"(8 x up to 40 tokens, bucketed), {args.steps} timed steps per stage; a fresh process "
        f"per arrangement, arrangements alternating, {args.rounds} rounds; medians (ms/step).",
        "",
        "| arrangement | stage 1 (probes) | stage 2 (training at the target) | stage 2 / main |",
        "|---|---|---|---|",
    ]
    for a in ARRANGEMENTS:
        s1, s2 = med[a]["stage 1"], med[a]["stage 2"]
        lines.append(f"| {a} | {s1:.0f} | {s2:.0f} | {s2 / ref:.2f} |")
    spread = {a: [round(r["stage 2"]) for r in rs] for a, rs in results.items()}
    lines += ["", f"Stage 2 per round: {spread}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT))
    main()
