"""Extrapolation error of each law on real probes: predict 4D and 8D from the ladder up to D.

usage: python benchmarks/extrapolation.py [--config configs/demo.yaml] [--first 16] [--d 64]
                                          [--out out/extrapolation] [--set key=value ...]

Probes every candidate of the config (same probe settings) on the ladder first..8D plus the
zero-shot point, through the pipeline's cached probe task (a re-run recomputes nothing), and
computes the NTK spectrum of each candidate. Then, using only the probes up to D, every law
predicts the loss (bits per byte) at 4D and 8D:
  vanilla, rectified (with zero-shot), AtS (power-phase line), local slope (Lens's
  extrapolation), LensLLM law with F(eta, t) and a scale shared across the candidates, and
  the Lens selector at budget D without F and with F (what the pipeline ranks by).
Prints |ln(pred / measured)| per model and law, the mean per law, and whether each law ranked
the candidates at 8D correctly; writes the table to OUT/extrapolation.csv and .md.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import load_config
from flows.runners import probe_threads
from flows.select import f_terms_of
from lens_model.laws import FitWarning, LensLaw, RectifiedLaw, VanillaLaw
from lens_model.phase import local_slope_prediction, power_phase_prediction
from lens_model.selectors import Lens, TableProbes
from tasks.data import prepare_data
from tasks.fit import curve_matrix
from tasks.models import resolve_candidate
from tasks.ntk_features import candidate_ntk
from tasks.probing.plan import ProbePlan
from tasks.runtime.result_storage import result_storage

ROOT = Path(__file__).resolve().parents[1]


@flow(name="extrapolation-benchmark", task_runner=ThreadPoolTaskRunner(max_workers=1))
def measure(
    config: str, first: int, d: int, overrides: list[str] | None = None
) -> tuple[dict, dict[str, float]]:
    """Every candidate's probes on first..8D (cached) and its F at budget D."""
    ladder = [f"ladder.first_size={first}", f"ladder.budget={8 * d}"]
    cfg = load_config(config, [*(overrides or []), *ladder])
    cache = Path(cfg.cache_dir).resolve()
    data = prepare_data(cfg.dataset, cfg.ladder)
    models = {
        c.name: resolve_candidate(c.name, cache_dir=str(cache / "models")) for c in cfg.candidates
    }
    threads = probe_threads(cfg.runner)
    plan = ProbePlan(data, models, cfg.trust(), cfg.probe, threads, cache, result_storage(cache))
    ntk = candidate_ntk(
        models, cfg.trust(), data.train, cfg.probe, cfg.ntk, threads=threads, storage=plan.storage
    )
    probes = plan.ladder()
    # F uses only what a selection at budget D would know: the steps of the probe at D.
    known = {n: [p for p in runs if p.size <= d] for n, runs in probes.items()}
    return probes, f_terms_of(ntk, known, cfg.probe.learning_rate)


def predictions(
    sizes: np.ndarray, table: np.ndarray, f: np.ndarray | None, d: int, targets: list[int]
) -> dict[str, np.ndarray]:
    """law name -> (N, len(targets)) predicted losses from the points with size <= d
    (the laws that need F are left out when ``f`` is None)."""
    seen = sizes <= d
    pos = seen & (sizes > 0)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        out["vanilla"] = VanillaLaw().fit(sizes[pos], table[:, pos]).predict(targets)
        out["rectified"] = RectifiedLaw().fit(sizes[seen], table[:, seen]).predict(targets)
        if f is not None:
            out["lens_law_F"] = (
                LensLaw(scale="shared").fit(sizes[seen], table[:, seen], f_term=f).predict(targets)
            )
    out["AtS"] = np.array(
        [[power_phase_prediction(sizes[pos], row[pos], t)[0] for t in targets] for row in table]
    )
    out["local_slope"] = np.array(
        [[local_slope_prediction(sizes[pos], row[pos], t)[0] for t in targets] for row in table]
    )
    # The Lens selector at budget D, as the pipeline runs it: without F (local slope) and with
    # F (the LensLLM law, shared scale, on its sparse first round plus zero-shot).
    variants = {"Lens_selector": None, "Lens_selector_F": f} if f is not None else {}
    for label, f_terms in variants.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)
            cols = [
                Lens()
                .select(
                    TableProbes(sizes, table, np.ones(len(table)), max_size=d, f_terms=f_terms),
                    budget=d,
                    target_size=t,
                )
                .predictions
                for t in targets
            ]
        out[label] = np.stack(cols, axis=1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--first", type=int, default=16)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "out" / "extrapolation"))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args(argv)
    probes, f_terms = measure(args.config, args.first, args.d, args.set)
    names = list(probes)
    sizes, table = curve_matrix(probes, "bits_per_byte")
    sizes = np.array(sizes, dtype=float)
    targets = [4 * args.d, 8 * args.d]
    truth = np.stack([table[:, list(sizes).index(t)] for t in targets], axis=1)
    f = np.array([f_terms[n] for n in names]) if f_terms else None
    rows = []
    for law, pred in predictions(sizes, table, f, args.d, targets).items():
        err = np.abs(np.log(pred / truth))
        ranked = list(np.argsort(pred[:, 1])) == list(np.argsort(truth[:, 1]))
        best_ok = int(np.argmin(pred[:, 1])) == int(np.argmin(truth[:, 1]))
        for i, name in enumerate(names):
            rows.append(
                {
                    "law": law,
                    "model": name,
                    "err_4D": err[i, 0],
                    "err_8D": err[i, 1],
                    "pred_8D": pred[i, 1],
                    "true_8D": truth[i, 1],
                    "ranking_8D_correct": ranked,
                    "best_8D_correct": best_ok,
                }
            )
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "extrapolation.csv", index=False)
    summary = frame.groupby("law", sort=False).agg(
        mean_err_4D=("err_4D", "mean"),
        mean_err_8D=("err_8D", "mean"),
        ranking_8D=("ranking_8D_correct", "first"),
        best_8D=("best_8D_correct", "first"),
    )
    lines = [
        f"config {Path(args.config).name} {' '.join(args.set)}".rstrip(),
        "",
        f"D = {args.d} (ladder {args.first}..{args.d} + zero-shot), targets 4D = "
        f"{targets[0]}, 8D = {targets[1]}; bits per byte; |ln(pred/measured)|",
        "",
        "| law | "
        + " | ".join(f"{n} 4D / 8D" for n in names)
        + " | mean 4D | mean 8D | ranking at 8D | best at 8D |",
        "|---" * (len(names) + 5) + "|",
    ]
    for law, part in frame.groupby("law", sort=False):
        cells = [f"{r.err_4D:.3f} / {r.err_8D:.3f}" for r in part.itertuples()]
        s = summary.loc[law]
        lines.append(
            f"| {law} | " + " | ".join(cells) + f" | {s.mean_err_4D:.3f} | "
            f"{s.mean_err_8D:.3f} | {'yes' if s.ranking_8D else 'no'} | "
            f"{'yes' if s.best_8D else 'no'} |"
        )
    if f_terms:
        lines += ["", "F(eta, t) per model: " + ", ".join(f"{n} {f_terms[n]:.4g}" for n in names)]
    text = "\n".join(lines)
    (out / "extrapolation.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
