"""The replay benchmark as plain functions (the protocol: docs/replay.md).

``run_benchmark`` is the whole benchmark: load the loss tables, run the selectors, score their
selections, intervals and pairwise probabilities, write the CSVs, the report and the plots, and
log one MLflow run per dataset. ``lensllm benchmark`` calls it in-process, without Prefect
(Prefect's temporary API server alone takes about 20 s to start); the ``replay-benchmark``
Prefect flow (``flows/benchmark.py``, ``lensllm benchmark --prefect``, the deployment in
``deployments/prefect.yaml``) calls it with its steps wrapped as Prefect tasks.

``lensllm benchmark`` logs to MLflow from a helper process started first
(``background_tracking=True``): importing MLflow and opening a fresh SQLite store (its schema
migrations) take several seconds, which then overlap the computation on another core. The
helper is a ``multiprocessing`` "spawn" process, which imports the caller's main module: call
with ``background_tracking=True`` only from a main module guarded by
``if __name__ == "__main__"`` (the CLI is). This module imports nothing heavy at import time,
because the helper process imports it.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

DEFAULT_METHODS = [
    "ZeroShot",
    "SubTuning",
    "ModelSize",
    "VanillaFit",
    "RectifiedFit",
    "AtS",
    "Lens",
    "SuccessiveHalving",
    "NLPMetrics",  # reported as "needs weights" on a table without them
]
DEFAULT_EXPERIMENT = "lensllm-replay"


@dataclass(frozen=True)
class Steps:
    """The benchmark's work, one callable per step (the Prefect flow passes task versions).

    Attributes
    ----------
    load : (path) -> LossTable
        ``tasks.reporting.loss_tables.load_loss_table``.
    replay : (table, methods, selectors) -> dict
        ``tasks.reporting.replay_report.replay_table``: selection, calibration and pairwise rows.
    fit_errors : (table) -> rows
        ``tasks.reporting.replay_report.fit_errors``.
    cost_accuracy : (table) -> rows
        ``tasks.reporting.replay_report.run_cost_accuracy``.
    log_run : (**kwargs) -> run id
        ``tasks.tracking.runs.log_benchmark_run`` (used when tracking is not in the background).
    """

    load: Callable
    replay: Callable
    fit_errors: Callable
    cost_accuracy: Callable
    log_run: Callable


def plain_steps() -> Steps:
    """The steps as plain functions."""
    from tasks.reporting.loss_tables import load_loss_table
    from tasks.reporting.replay_report import fit_errors, replay_table, run_cost_accuracy

    return Steps(load_loss_table, replay_table, fit_errors, run_cost_accuracy, _log_run)


class BackgroundTracking:
    """MLflow in a helper process: it imports MLflow and opens the store (creating the
    experiment) as soon as it starts, then logs each run it is handed.

    Parameters
    ----------
    tracking_uri : str or None
        MLflow tracking URI; None: ``tasks.tracking.client.default_tracking_uri()``.
    experiment : str
        Experiment name (created when missing).
    """

    def __init__(self, tracking_uri: str | None, experiment: str) -> None:
        if tracking_uri:
            from tasks.tracking.client import check_store_kind

            check_store_kind(tracking_uri)  # a store MLflow refuses fails before the replay
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        self._uri = self._pool.submit(_open_store, tracking_uri, experiment)

    def log_run(self, **kwargs) -> str:
        """Log one run (``tasks.tracking.runs.log_benchmark_run`` arguments but the URI); errors of
        the helper (an unreachable server, a deleted experiment) are raised here."""
        kwargs["tracking_uri"] = self._uri.result()
        return self._pool.submit(_log_run, **kwargs).result()

    @property
    def tracking_uri(self) -> str:
        return self._uri.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _open_store(tracking_uri: str | None, experiment: str) -> str:
    from tasks.tracking.client import Tracker

    tracker = Tracker(tracking_uri) if tracking_uri else Tracker.local()
    tracker.check_reachable()
    tracker.experiment_id(experiment)
    return tracker.uri


def _log_run(tracking_uri: str | None = None, **kwargs) -> str:
    from tasks.tracking.client import Tracker
    from tasks.tracking.runs import log_benchmark_run

    tracker = Tracker(tracking_uri) if tracking_uri else Tracker.local()
    return log_benchmark_run(tracker, **kwargs)


@dataclass(frozen=True)
class BenchmarkSettings:
    """What to replay and where the outputs go (the CLI's options and the flow's parameter).

    Attributes
    ----------
    tables : list of str
        Loss table CSV paths.
    out_dir : str
        Output folder (created).
    methods : list of str, optional
        Selector names (default: all of ``DEFAULT_METHODS``).
    tracking_uri, experiment
        Where to log (default URI: ``tasks.tracking.client.default_tracking_uri()``).
    plots : bool
        Write the PNG plots.
    prior : str
        The error model of the calibrated intervals: ``"none"``, ``"default"`` (the shipped
        file), ``"leave-one-table-out"`` (fitted on the other tables, per table) or a path.
    """

    tables: list[str]
    out_dir: str = "out/benchmark"
    methods: list[str] | None = None
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    plots: bool = True
    prior: str = "none"


def run_benchmark(
    settings: BenchmarkSettings,
    *,
    steps: Steps | None = None,
    background_tracking: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run ``methods`` on each loss table and write the benchmark's outputs to ``out_dir``.

    Outputs: ``selection.csv`` (PearCorr, RelAcc, Cost per method and budget),
    ``selection_detail.csv``, ``fit_error.csv``, ``calibration.csv`` (coverage, median log
    width and mean interval score of the intervals per method, budget and nominal level 0.5,
    0.8, 0.9; calibrated and heuristic intervals side by side), ``pairwise.csv`` (reliability
    of the pairwise probabilities, with ECE and Brier score), ``cost_accuracy.csv``,
    ``report.md`` and, with ``plots``, per dataset ``<dataset>_metrics.png``,
    ``<dataset>_curves.png``, ``<dataset>_cost_accuracy.png`` and
    ``<dataset>_calibration.png``. Everything is logged to MLflow, one run per dataset.

    Parameters
    ----------
    settings : BenchmarkSettings
        The tables, methods, output folder and tracking.
    steps : Steps, optional
        The functions doing the work (default: :func:`plain_steps`).
    background_tracking : bool
        Log to MLflow from a helper process started first (module docstring); otherwise
        through ``steps.log_run`` at the end, in this process.
    log : callable, optional
        Receives progress messages.

    Returns
    -------
    dict
        ``out_dir``, ``runs`` (MLflow run id per dataset), ``seconds`` (until every output
        file was written) and ``total_seconds`` (MLflow logging included).
    """
    from flows.config import check_selector

    methods = list(settings.methods or DEFAULT_METHODS)
    for name in methods:
        check_selector(name, "methods")  # unknown names fail here, with suggestions
    steps, log = steps or plain_steps(), log or (lambda message: None)
    started = time.perf_counter()
    tracker = _background(settings) if background_tracking else None
    tables, plots = settings.tables, settings.plots
    try:
        out = Path(settings.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        models = _error_models(settings, steps, log)
        frames = _compute_and_write(tables, out, methods, plots, steps, log, models)
        seconds = time.perf_counter() - started
        runs = _log_runs(frames, methods, out, settings, tracker or steps.log_run)
    finally:
        if tracker is not None:
            tracker.close()
    total = time.perf_counter() - started
    log(f"replay benchmark done in {seconds:.2f} s ({total:.2f} s with MLflow); outputs in {out}")
    return {"out_dir": str(out), "runs": runs, "seconds": seconds, "total_seconds": total}


def _background(settings: BenchmarkSettings) -> BackgroundTracking:
    return BackgroundTracking(settings.tracking_uri, settings.experiment)


def _log_runs(frames, methods, out: Path, settings: BenchmarkSettings, tracker) -> dict:
    """One MLflow run per dataset, through ``tracker``: a :class:`BackgroundTracking` (which
    knows its URI) or a ``log_run`` step; returns the run id per dataset."""
    runs = {}
    for dataset, metrics in _metrics(frames).items():
        kwargs = {
            "experiment": settings.experiment,
            "run_name": f"replay-{dataset}",
            "params": {"methods": ",".join(methods), "dataset": dataset},
            "tags": {},
            "metrics": metrics,
            "artifacts_dir": str(out),
        }
        if isinstance(tracker, BackgroundTracking):
            runs[dataset] = tracker.log_run(**kwargs)
        else:
            runs[dataset] = tracker(tracking_uri=settings.tracking_uri, **kwargs)
    return runs


LEAVE_ONE_OUT = "leave-one-table-out"


def _error_models(settings: BenchmarkSettings, steps: Steps, log) -> dict:
    """The error model each table is scored with, by path (None: no prior)."""
    if settings.prior != LEAVE_ONE_OUT:
        from tasks.priors.prior_file import resolve_prior

        model = resolve_prior(settings.prior)
        return {path: model for path in settings.tables}
    from lens_model.replay import error_groups, fit_groups

    if len(settings.tables) < 3:
        from tasks.records.errors import ConfigError

        raise ConfigError("--prior leave-one-table-out needs at least 3 tables (--table ...)")
    tables = {path: steps.load(path) for path in settings.tables}
    groups = {path: error_groups([t]) for path, t in tables.items()}
    models = {}
    for path, table in tables.items():
        others = [g for p, part in groups.items() if p != path for g in _flat(part)]
        names = ", ".join(t.name for p, t in tables.items() if p != path)
        models[path] = fit_groups(others, source=f"leave-one-table-out: fitted on {names}")
        log(f"{table.name}: error model fitted on {names}")
    return models


def _flat(groups_by_family: dict) -> list:
    return [(family, g) for family, part in groups_by_family.items() for g in part]


def _compute_and_write(
    tables, out: Path, methods, plots: bool, steps: Steps, log, models: dict
) -> dict:
    import pandas as pd

    from lens_model.replay import make_selectors
    from tasks.reporting import replay_report as outputs

    selection, calibration, pairwise, fit_error, tradeoff, unrun = [], [], [], [], [], []
    for path in tables:
        table = steps.load(path)
        selectors = make_selectors(methods, error_model=models.get(path))
        result = steps.replay(table, methods, selectors)
        selection += result["selection"]
        unrun += result["unrun"]
        calibration += result["calibration"]
        pairwise += result["pairwise"]
        fit_error += steps.fit_errors(table)
        tradeoff += steps.cost_accuracy(table)
        log(f"{table.name}: {len(table.models)} models, {len(result['selection'])} rows")
        if plots:
            frame = pd.DataFrame(result["selection"])
            outputs.plot_metrics(out, frame, table.name)
            budget = int(frame.max_data_num.min())
            laws = {  # the selectors' own fits at the smallest budget: nothing refitted
                law: selectors[name].law_at(table.sizes, table.losses, budget)
                for law, name in (("vanilla", "VanillaFit"), ("rectified", "RectifiedFit"))
                if name in selectors
            }
            outputs.plot_curves(out, table, budget=budget, laws=laws)
            outputs.plot_cost_accuracy(out, pd.DataFrame(tradeoff), table.name)
            if result["calibration"]:
                outputs.plot_calibration(
                    out,
                    pd.DataFrame(result["calibration"]),
                    pd.DataFrame(result["pairwise"], columns=outputs.PAIRWISE_COLUMNS),
                    table.name,
                )
    sel = pd.DataFrame(selection)
    sel[outputs.SELECTION_COLUMNS].to_csv(out / "selection.csv", index=False, float_format="%.4f")
    sel.to_csv(out / "selection_detail.csv", index=False, float_format="%.4f")
    fe = pd.DataFrame(fit_error)
    fe[["dataset", "model", "law", "rmse_log"]].to_csv(out / "fit_error.csv", index=False)
    cal = pd.DataFrame(calibration, columns=outputs.CALIBRATION_COLUMNS)
    pw = pd.DataFrame(pairwise, columns=outputs.PAIRWISE_COLUMNS)
    outputs.write_calibration(out, cal, pw)
    outputs.write_report(out, sel, fe, cal, pw, unrun)
    ca = pd.DataFrame(tradeoff)
    outputs.write_cost_accuracy(out, ca)  # cost_accuracy.csv + its section of report.md
    return {"selection": sel, "cost_accuracy": ca, "calibration": cal, "pairwise": pw}


def _metrics(frames: dict) -> dict[str, list[tuple[str, float, int]]]:
    """MLflow metrics per dataset, ``(key, value, step)`` with step = ratio target / budget
    (0 for the pairwise scores, which pool every budget)."""
    sel, ca = frames["selection"], frames["cost_accuracy"]
    cal, pw = frames["calibration"], frames["pairwise"]
    out = {}
    for dataset, part in sel.groupby("dataset", sort=False):
        metrics = [
            (f"{r.method}_{r.metric}", float(r.value), int(r.ratio)) for r in part.itertuples()
        ]
        capped = ca.method.isin(("Lens", "SuccessiveHalving"))
        lens = ca[(ca.dataset == dataset) & capped & (ca.skipped == "")]
        metrics += [
            (
                f"{r.method}_f{r.cost_fraction_setting:g}_{name}",
                float(getattr(r, col)),
                int(r.ratio),
            )
            for r in lens.itertuples()
            for name, col in (("Cost", "cost"), ("PearCorr", "pear_corr"), ("RelAcc", "rel_acc"))
        ]
        for r in cal[cal.dataset == dataset].itertuples():
            key = _metric_name(r.method)
            for name in ("coverage", "median_log_width", "mean_interval_score"):
                value = float(getattr(r, name))
                if value == value:  # NaN (no interval) is not logged
                    metrics.append((f"{key}_{name}_{r.nominal:g}", value, int(r.ratio)))
        scores = pw[pw.dataset == dataset].drop_duplicates("method")
        for r in scores.itertuples():
            key = _metric_name(r.method)
            metrics += [(f"{key}_pairwise_ece", float(r.ece), 0)]
            metrics += [(f"{key}_pairwise_brier", float(r.brier), 0)]
        out[dataset] = metrics
    return out


def _metric_name(method: str) -> str:
    """``"AtS (heuristic)"`` -> ``"AtS_heuristic"`` (MLflow keys take no parentheses)."""
    return method.replace(" (", "_").replace(")", "").replace(" ", "_")
