"""Replay benchmark flow: every selector on published loss tables (design.md section 5)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from flows.config import check_selector
from tasks.replay import (
    SELECTION_COLUMNS,
    cost_accuracy_task,
    fit_errors_task,
    plot_cost_accuracy,
    plot_curves,
    plot_metrics,
    run_replay_task,
    write_cost_accuracy,
    write_report,
)
from tasks.tables import load_loss_table_task
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.runs import log_benchmark_run

DEFAULT_METHODS = [
    "ZeroShot",
    "SubTuning",
    "ModelSize",
    "VanillaFit",
    "RectifiedFit",
    "AtS",
    "Lens",
]


@flow(name="replay-benchmark")
def benchmark_flow(
    tables: list[str],
    out_dir: str = "out/benchmark",
    methods: list[str] | None = None,
    tracking_uri: str | None = None,
    experiment: str = "lensllm-replay",
    plots: bool = True,
) -> dict:
    """Run ``methods`` on each loss table; write selection.csv, fit_error.csv, report.md, plots.

    Also writes the cost-accuracy trade-off (cost_accuracy.csv, a report section, a plot per
    dataset) of Lens at fixed fractions of AtS's cost, next to AtS and SubTuning.

    Returns the output folder, the MLflow run id per dataset and the wall time.
    """
    logger = get_run_logger()
    methods = list(methods or DEFAULT_METHODS)
    for name in methods:
        check_selector(name, "methods")  # fails here, with suggestions, before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(tracking_uri) if tracking_uri else Tracker.local()
    started = time.perf_counter()
    selection, fit_error, tradeoff, runs = [], [], [], {}
    for path in tables:
        table = load_loss_table_task(path)
        rows = run_replay_task(table, methods)
        errs = fit_errors_task(table)
        selection += rows
        fit_error += errs
        tradeoff += cost_accuracy_task(table)
        logger.info("%s: %d models, %d rows", table["name"], len(table["models"]), len(rows))
        frame = pd.DataFrame(rows)
        if plots:
            plot_metrics(out, frame, table["name"])
            plot_curves(out, table, budget=int(frame.max_data_num.min()))
            plot_cost_accuracy(out, pd.DataFrame(tradeoff), table["name"])
    sel = pd.DataFrame(selection)
    sel[SELECTION_COLUMNS].to_csv(out / "selection.csv", index=False, float_format="%.4f")
    sel.to_csv(out / "selection_detail.csv", index=False, float_format="%.4f")
    fe = pd.DataFrame(fit_error)
    fe[["dataset", "model", "law", "rmse_log"]].to_csv(out / "fit_error.csv", index=False)
    write_report(out, sel, fe)
    ca = pd.DataFrame(tradeoff)
    write_cost_accuracy(out, ca)  # cost_accuracy.csv + the "Cost-accuracy" section of report.md
    elapsed = time.perf_counter() - started
    for dataset, part in sel.groupby("dataset", sort=False):
        metrics = [
            (f"{r.method}_{r.metric}", float(r.value), int(r.ratio)) for r in part.itertuples()
        ]
        lens = ca[(ca.dataset == dataset) & (ca.method == "Lens") & (ca.skipped == "")]
        metrics += [
            (f"Lens_f{r.cost_fraction_setting:g}_{name}", float(getattr(r, col)), int(r.ratio))
            for r in lens.itertuples()
            for name, col in (("Cost", "cost"), ("PearCorr", "pear_corr"), ("RelAcc", "rel_acc"))
        ]
        runs[dataset] = log_benchmark_run(
            tracker,
            experiment=experiment,
            run_name=f"replay-{dataset}",
            params={"methods": ",".join(methods), "dataset": dataset},
            tags={T.TASK: f"replay-{dataset}"},
            metrics=metrics,
            artifacts_dir=str(out),
        )
    logger.info("replay benchmark done in %.2f s; outputs in %s", elapsed, out)
    return {"out_dir": str(out), "runs": runs, "seconds": elapsed}
