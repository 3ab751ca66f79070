"""How the calibrated intervals and pairwise probabilities hold beyond the FLAN table.

usage: python benchmarks/calibration_robustness.py [TABLE] [--quick]
       (default TABLE: ../shared/benchmarks/flan.csv; --quick: Lens and AtS only; ~1 min)

Runs ``lens_model.replay.calibration_replay`` (Lens, AtS, RectifiedFit, VanillaFit; calibrated
and heuristic intervals) on

* the table itself at its own target and at pretend targets (the table cut at target / 2 and
  target / 4, budgets target / 8 ... target / 512 that are on the ladder);
* subsets of its models: halves (three random splits) and leave-one-family-out;
* synthetic tables from the rectified law fitted to each of the table's curves (all sizes),
  0.5 % log noise, with the knees moved (D_l^(1/beta) x 1/100, 1/10, 10) and curves that
  flatten (E raised by 30 % or 50 % of the target loss), at 0.3 % and 1 % noise;
* generic synthetic rectified-law tables (30 models, uniform parameter ranges) whose
  curves have an early knee, a late knee, or flatten towards E.

Prints one markdown table per block: coverage at 0.5 / 0.8 / 0.9 averaged over the budgets,
median log width and mean interval score at 0.9, pairwise ECE and Brier score.
Nothing is tuned here: the growth model and every setting are the library defaults.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from lens_model.laws import RectifiedLaw
from lens_model.loss_table import LossTable
from lens_model.replay import calibration_replay
from tasks.reporting.loss_tables import load_loss_table

ROOT = Path(__file__).resolve().parents[1]

METHODS = ["Lens", "AtS", "RectifiedFit", "VanillaFit"]
RATIOS = (8, 16, 32, 64, 128, 256, 512)
LEVELS = (0.5, 0.8, 0.9)


def budgets(sizes: np.ndarray, target: int) -> list[int]:
    return [target // r for r in RATIOS if target % r == 0 and target // r in sizes]


def summary(sizes, losses, target: int, methods, model_sizes=None) -> dict[str, list[float]]:
    """Per method label: coverage at each level, median log width @0.9, interval score @0.9,
    pairwise ECE and Brier. Model sizes set Lens's cost cap (equal sizes when not given)."""
    keep = sizes <= target
    table = LossTable(
        name="subset",
        models=[str(i) for i in range(len(losses))],
        sizes=sizes[keep],
        losses=losses[:, keep],
        model_sizes=np.ones(len(losses)) if model_sizes is None else model_sizes,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows, pairwise = calibration_replay(
            table,
            methods=methods,
            budgets=budgets(sizes[keep], target),
            target_size=target,
        )
    out = {}
    for label in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == label]
        cov = [np.mean([r["coverage"] for r in mine if r["nominal"] == lv]) for lv in LEVELS]
        top = [r for r in mine if r["nominal"] == 0.9]
        out[label] = cov + [
            float(np.median([r["median_log_width"] for r in top])),
            float(np.mean([r["mean_interval_score"] for r in top])),
            pairwise[label]["ece"],
            pairwise[label]["brier"],
        ]
    return out


def print_block(title: str, results: dict[str, dict[str, list[float]]], labels) -> None:
    print(f"\n### {title}\n")
    print("| case | method | cov@0.5 | cov@0.8 | cov@0.9 | width@0.9 | IS@0.9 | ECE | Brier |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, per_method in results.items():
        for label in labels:
            if label in per_method:
                v = per_method[label]
                cells = " | ".join(f"{x:.2f}" for x in v[:3]) + " | "
                cells += " | ".join(f"{x:.3f}" for x in v[3:])
                print(f"| {case} | {label} | {cells} |")


def fitted_params(sizes, losses) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        law = RectifiedLaw().fit(sizes, losses)
    return {k: np.asarray(v) for k, v in law.params_.items()}


def law_variant(sizes, p, *, knee_shift=1.0, e_add=0.0, noise=0.005, seed=0) -> np.ndarray:
    """Curves of the rectified law with each knee D_l^(1/beta) times ``knee_shift`` and E raised
    by ``e_add`` of the loss at the largest size (curves that flatten towards E)."""
    beta, e, l0 = p["beta"], p["E"], p["zero_shot_loss"]
    d_l = p["D_l"] * knee_shift**beta
    at_target = (l0 - e) * p["D_l"] / (p["D_l"] + sizes[-1] ** beta) + e
    e2 = np.minimum(e + e_add * at_target, 0.95 * at_target)
    b = (l0 - e2) * d_l
    losses = b[:, None] / (d_l[:, None] + sizes[None, :] ** beta[:, None]) + e2[:, None]
    return losses * np.exp(noise * np.random.default_rng(seed).standard_normal(losses.shape))


GENERIC = {  # log10 knee range, beta range, E as a fraction of the loss at the largest size
    "early knee": ((1.0, 3.0), (0.2, 0.5), (0.0, 0.1)),
    "late knee": ((4.0, 6.5), (0.3, 0.7), (0.0, 0.3)),
    "flattening": ((2.0, 4.0), (0.4, 0.9), (0.6, 0.9)),
}


def generic_table(sizes, kind: str, seed: int, n: int = 30, noise: float = 0.005):
    (k_lo, k_hi), (b_lo, b_hi), (f_lo, f_hi) = GENERIC[kind]
    rng = np.random.default_rng(seed)
    beta = rng.uniform(b_lo, b_hi, n)
    d_l = (10 ** rng.uniform(k_lo, k_hi, n)) ** beta
    l0 = rng.uniform(2.0, 5.0, n)
    frac = rng.uniform(f_lo, f_hi, n)
    g = d_l / (d_l + sizes[-1] ** beta)
    e = frac * l0 * g / (1 - frac * (1 - g))
    losses = (l0 - e)[:, None] * d_l[:, None] / (d_l[:, None] + sizes[None, :] ** beta[:, None])
    losses = losses + e[:, None]
    return losses * np.exp(noise * rng.standard_normal(losses.shape))


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    path = args[0] if args else str(ROOT.parent / "shared" / "benchmarks" / "flan.csv")
    if not Path(path).is_file():
        print(f"no table at {path}; pass one as the first argument")
        return 1
    started = time.perf_counter()
    table = load_loss_table(path)
    sizes, losses = table.sizes.astype(float), table.losses
    families, weights = np.array(table.families), table.model_sizes
    target = int(sizes.max())
    name = table.name
    main_labels = [
        "Lens",
        "AtS",
        "RectifiedFit",
        "VanillaFit",
        "Lens (heuristic)",
        "AtS (heuristic)",
    ]
    methods = ["Lens", "AtS"] if quick else METHODS

    block = {
        f"{name} target {target // d}": summary(sizes, losses, target // d, methods, weights)
        for d in (1, 2, 4)
    }
    print_block(f"{name} at its own and at pretend targets", block, main_labels)

    rng = np.random.default_rng(0)
    block = {}
    for split in range(3):
        perm = rng.permutation(len(losses))
        for half, rows in (("a", perm[: len(perm) // 2]), ("b", perm[len(perm) // 2 :])):
            block[f"half {split}{half}"] = summary(
                sizes, losses[rows], target, ["Lens", "AtS"], weights[rows]
            )
    for family in sorted(set(families)):
        if (families == family).sum() >= 3:
            rows = families != family
            block[f"without {family}"] = summary(
                sizes, losses[rows], target, ["Lens", "AtS"], weights[rows]
            )
    print_block(f"{name} subsets (Lens, AtS)", block, ["Lens", "AtS"])

    p = fitted_params(sizes, losses)
    variants = {
        "law fit": {},
        "knees / 100": {"knee_shift": 0.01},
        "knees / 10": {"knee_shift": 0.1},
        "knees x 10": {"knee_shift": 10.0},
        "E + 30 %": {"e_add": 0.3},
        "knees / 10, E + 30 %": {"knee_shift": 0.1, "e_add": 0.3},
        "knees / 100, E + 50 %": {"knee_shift": 0.01, "e_add": 0.5},
    }
    block = {}
    for case, kw in variants.items():
        for noise in (0.003, 0.01):
            block[f"{case}, noise {noise:g}"] = summary(
                sizes, law_variant(sizes, p, noise=noise, **kw), target, methods
            )
    print_block(f"rectified-law variants of {name}'s curves", block, main_labels)

    block = {}
    for kind in GENERIC:
        for seed in range(1 if quick else 2):
            block[f"{kind} #{seed}"] = summary(
                sizes, generic_table(sizes, kind, seed), target, ["Lens", "AtS"]
            )
    print_block(
        "generic synthetic rectified-law tables (30 models, 0.5 % noise)",
        block,
        ["Lens", "AtS", "Lens (heuristic)", "AtS (heuristic)"],
    )
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
