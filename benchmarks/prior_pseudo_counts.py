"""How the caps on the error model's pseudo-counts move its out-of-sample calibration.

usage: python benchmarks/prior_pseudo_counts.py [TABLE ...]   (make bench-prior-caps)
       (default: ../shared/benchmarks/flan.csv and the six live audit tables; ~8 min;
       writes benchmarks/results/prior_pseudo_counts.md)

Two caps (``lens_model.error_model``). The pooled prior, fitted on ``K`` tasks, counts as at
most ``c`` errors of a new selection per task (``kappa <= c K``, ``2 a <= c K``;
``PSEUDO_ERRORS_PER_TASK``); it is the whole prior of a model without task components. Each
task's own prior, a component of the mixture a new selection starts from, counts as at most
``c_k`` errors (``COMPONENT_PSEUDO_ERRORS``). For each setting every table is scored
leave-one-table-out, with a model fitted on the other tables, exactly as ``lensllm benchmark
--prior leave-one-table-out`` scores it, and the pooled figures of its report are printed for
``Lens`` and ``AtS``: coverage at 0.5 / 0.8 / 0.9 (the mean over every table's budgets), the
mean interval score at 0.9 and the pairwise ECE. Both defaults were chosen with this table in
view, so these figures are not an out-of-sample test of the caps themselves: tables outside
this set are.
"""

from __future__ import annotations

import datetime
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

from lens_model.error_model import COMPONENT_PSEUDO_ERRORS, PSEUDO_ERRORS_PER_TASK
from lens_model.replay import error_groups, fit_groups, make_selectors
from tasks.reporting.loss_tables import live_table_paths, load_loss_table
from tasks.reporting.replay_report import PAIRWISE_COLUMNS, pooled_summary, run_calibration

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TABLES = [str(ROOT.parent / "shared" / "benchmarks" / "flan.csv"), *live_table_paths()]
# (model, c, c_k): the pooled prior alone at two caps, then the mixture at several c_k
SETTINGS = [("pooled prior alone", c, None) for c in (PSEUDO_ERRORS_PER_TASK, None)] + [
    ("mixture of tasks", PSEUDO_ERRORS_PER_TASK, c_k) for c_k in (4, 8, 12, 24, 48)
]
METHODS = ["Lens", "AtS"]
OUT = ROOT / "benchmarks" / "results" / "prior_pseudo_counts.md"


def pooled(tables: dict, groups: dict, setting) -> pd.DataFrame:
    kind, per_task, per_component = setting
    calibration, pairwise = [], []
    for path, table in tables.items():
        others = [(f, g) for p, part in groups.items() if p != path for f in part for g in part[f]]
        model = fit_groups(
            others,
            pseudo_errors_per_task=per_task,
            component_pseudo_errors=per_component,
            per_task=kind == "mixture of tasks",
        )
        selectors = make_selectors(METHODS, error_model=model)
        result = run_calibration(table, METHODS, selectors=selectors)
        calibration += result["calibration"]
        pairwise += result["pairwise"]
    frame = pooled_summary(
        pd.DataFrame(calibration), pd.DataFrame(pairwise, columns=PAIRWISE_COLUMNS)
    )
    return frame[frame.method.isin(METHODS)]


def main(paths: list[str]) -> None:
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    tables = {p: load_loss_table(p) for p in paths}
    groups = {p: error_groups([t]) for p, t in tables.items()}
    lines = [
        "# Pseudo-count caps of the error model, scored leave-one-table-out",
        "",
        f"{datetime.date.today()}, `python benchmarks/prior_pseudo_counts.py` "
        f"({', '.join(t.name for t in tables.values())}). Pooled over the tables as in "
        "`lensllm benchmark --prior leave-one-table-out`: coverage is the mean over every "
        "table's budgets, ECE pools the pairs. c = errors of a new selection one task of the "
        "pooled prior is worth at most (kappa <= c K, 2 a <= c K); c_k = the same for one "
        "task's own prior, a component of the mixture. The defaults were chosen with this "
        "table in view: it is not an out-of-sample test of the caps themselves.",
        "",
        "| prior | c | c_k | method | coverage@0.5 / 0.8 / 0.9 | interval score@0.9 | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for setting in SETTINGS:
        kind, per_task, per_component = setting
        c = "none" if per_task is None else f"{per_task:g}"
        c_k = "-" if kind != "mixture of tasks" else f"{per_component:g}"
        if per_component == COMPONENT_PSEUDO_ERRORS:
            c_k += " (default)"
        for row in pooled(tables, groups, setting).to_dict("records"):
            cov = " / ".join(f"{row[f'coverage@{level}']:.3f}" for level in (0.5, 0.8, 0.9))
            score, ece = row["interval score@0.9"], row["pairwise ECE"]
            lines.append(
                f"| {kind} | {c} | {c_k} | {row['method']} | {cov} | {score:.3f} | {ece:.3f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"{time.perf_counter() - start:.0f} s on this machine.", ""]
    OUT.write_text("\n".join(lines))
    print(f"\n{lines[-2]} Written to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT_TABLES)
