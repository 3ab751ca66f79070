"""NTK feature cost versus one ladder of probes, per candidate of a config, in one run.

usage: python benchmarks/ntk_vs_ladder.py [--config configs/demo.yaml]

For every candidate: the time of `tasks.ntk_features.compute_ntk_features` on the config's NTK
probe set
and the time of running the whole probe ladder (zero-shot + every ladder size, the config's
probe settings, no cache) with `tasks.probing.probe.run_probe`, measured back to back on the same
machine, after one untimed warm-up of torch.func. Prints a markdown table with the ratio (the
issue's target: <= 10 %) and the NTK process's peak RSS.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flows.config import load_config
from tasks.data import prepare_data
from tasks.models import resolve_candidate
from tasks.ntk_features import compute_ntk_features
from tasks.probing.probe import run_probe

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    data = prepare_data(cfg.dataset, cfg.ladder)
    # One untimed NTK on the tiny built-in: the first torch.func call of a process pays a
    # one-off warm-up (several seconds) that would otherwise be charged to the first candidate.
    tiny = resolve_candidate("tiny-llama", cache_dir=str(Path(cfg.cache_dir) / "models"))
    compute_ntk_features(tiny, data.train[:4], cfg.probe)
    rows = []
    for cand in cfg.candidates:
        path = resolve_candidate(cand.name, cache_dir=str(Path(cfg.cache_dir) / "models"))
        start = time.perf_counter()
        feats = compute_ntk_features(
            path, data.train[: cfg.ntk.n_examples], cfg.probe, projection_dim=cfg.ntk.projection_dim
        )
        ntk_s = time.perf_counter() - start
        start = time.perf_counter()
        for size in [0, *data.sizes]:
            run_probe(path, data.for_probe(size), cfg.probe, progress=False)
        ladder_s = time.perf_counter() - start
        rows.append((cand.name, feats.n, ntk_s, ladder_s, feats.peak_rss_mb))
        print(f"{cand.name}: NTK {ntk_s:.1f} s, ladder {ladder_s:.1f} s", flush=True)
    print("\n| candidate | NTK n | NTK s | ladder s | NTK / ladder | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, n, ntk_s, ladder_s, rss in rows:
        print(
            f"| {name} | {n} | {ntk_s:.1f} | {ladder_s:.1f} | {100 * ntk_s / ladder_s:.1f} % "
            f"| {rss:.0f} |"
        )
    total_ntk = sum(r[2] for r in rows)
    total_ladder = sum(r[3] for r in rows)
    print(
        f"| all | | {total_ntk:.1f} | {total_ladder:.1f} | {100 * total_ntk / total_ladder:.1f} %"
        " | |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
