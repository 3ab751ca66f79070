"""Replay-benchmark steps: run the selectors on a loss table, score their selections, intervals
and probabilities, fit errors, reports and plots.

Plain functions (no Prefect): ``flows/benchmark_run.py`` runs them in-process for
``lensllm benchmark``, and the ``replay-benchmark`` Prefect flow (``flows/benchmark.py``) runs
the same functions as tasks. matplotlib loads on the first plot only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from lens_model.laws import LAWS, FitWarning
from lens_model.loss_table import LossTable
from lens_model.phase import fit_power_phase
from lens_model.replay import (
    IN_SELECTION,
    INTERVAL_KINDS,
    calibration_replay,
    make_selectors,
    replay,
)
from lens_model.selectors import NeedsWeightsError
from lens_model.table_score import score
from lens_model.tradeoff import cost_accuracy_curve
from tasks.records.errors import LossTableError  # noqa: E402

RATIOS = (8, 16, 32, 64, 128, 256, 512)
METRICS = ("PearCorr", "RelAcc", "Cost")
SELECTION_COLUMNS = [
    "dataset",
    "ratio",
    "max_data_num",
    "predict_data_num",
    "metric",
    "method",
    "value",
]


MIN_POINTS = 3  # AtS's first line (k = 3) and every law need at least this many sizes


def budgets_for(table: LossTable) -> tuple[int, list[int]]:
    """Target = the largest size of the table; budgets = target / ratio for ratios on its
    ladder that leave at least ``MIN_POINTS`` non-zero sizes up to the budget (a short table,
    e.g. an audit's, has fewer budgets than a published one)."""
    sizes = table.sizes.tolist()
    target = max(sizes)
    budgets = [
        target // r
        for r in RATIOS
        if target % r == 0
        and target // r in sizes
        and sum(0 < d <= target // r for d in sizes) >= MIN_POINTS
    ]
    if not budgets:
        raise LossTableError(
            f"{table.name}: no budget target/8 ... target/512 is on the ladder with at least "
            f"{MIN_POINTS} non-zero sizes up to it; the table needs a longer ladder"
        )
    return target, budgets


CALIBRATION_COLUMNS = [
    "dataset",
    "method",
    "ratio",
    "nominal",
    "coverage",
    "median_log_width",
    "mean_interval_score",
    "interval_method",  # "none" where a calibrated selector had too few probes to backtest
]
PAIRWISE_COLUMNS = [
    "dataset",
    "method",
    "bin_low",
    "bin_high",
    "pairs",
    "mean_probability",
    "observed_frequency",
    "ece",
    "brier",
]


def replay_table(
    table: LossTable, methods: list[str], selectors: dict | None = None
) -> dict[str, list[dict]]:
    """Selections, intervals and pairwise probabilities of ``methods`` on one table.

    The two runs share one selector per method (``selectors``, made when not given), so a law
    fitted for one budget is not refitted for another budget's backtest. Returns ``selection``
    (rows of selection.csv plus the selected model), ``calibration`` (rows of
    calibration.csv) and ``pairwise`` (rows of pairwise.csv).
    """
    selectors = make_selectors(methods) if selectors is None else selectors
    unrun = needs_weights(table, methods, selectors)
    methods = [m for m in methods if m not in unrun]
    return {
        "selection": run_replay(table, methods, selectors=selectors),
        **run_calibration(table, methods, selectors=selectors),
        "unrun": [
            {"dataset": table.name, "method": m, "reason": reason} for m, reason in unrun.items()
        ],
    }


def needs_weights(table: LossTable, methods: list[str], selectors: dict) -> dict[str, str]:
    """The methods that rank by the candidates' weights, which a loss table does not hold
    (``NLPMetrics`` without values): method -> why it is not run."""
    target, budgets = budgets_for(table)
    out = {}
    for method in methods:
        selector = selectors.get(method) or make_selectors([method])[method]
        try:
            score(selector, table, budget=budgets[0], target_size=target)
        except NeedsWeightsError as err:
            out[method] = f"needs weights: {err}"
        except ValueError:
            pass  # the replay itself reports the selector's own errors
    return out


def run_replay(
    table: LossTable, methods: list[str], *, selectors: dict | None = None
) -> list[dict]:
    """One row per (budget, method, metric), in the ``selection.csv`` format."""
    target, budgets = budgets_for(table)
    results = replay(
        table,
        methods=methods,
        budgets=budgets,
        target_size=target,
        selectors=selectors,
    )
    rows = []
    for r in results:
        scored = r.score
        values = (scored.pear_corr, scored.rel_acc, scored.cost)
        for metric, value in zip(METRICS, values, strict=True):
            rows.append(
                {
                    "dataset": table.name,
                    "ratio": target // scored.budget,
                    "max_data_num": scored.budget,
                    "predict_data_num": target,
                    "metric": metric,
                    "method": r.method,
                    "value": round(float(value), 4),
                    "selected": table.models[scored.selection.selected],
                }
            )
    return rows


def run_calibration(
    table: LossTable, methods: list[str], *, selectors: dict | None = None
) -> dict[str, list[dict]]:
    """Rows of ``calibration.csv`` and ``pairwise.csv`` for the methods that predict a loss.

    Calibrated and heuristic intervals side by side (method ``"AtS"`` and
    ``"AtS (heuristic)"``), at nominal levels 0.5, 0.8 and 0.9; pairwise probabilities binned
    in tenths, with the expected calibration error and the Brier score per method. With an
    error model on the selectors, the backtest-only intervals too (``"AtS (in-selection)"``).
    """
    target, budgets = budgets_for(table)
    with_prior = any(getattr(s, "error_model", None) for s in (selectors or {}).values())
    interval_rows, pairwise = calibration_replay(
        table,
        methods=methods,
        budgets=budgets,
        target_size=target,
        selectors=selectors,
        intervals=(*INTERVAL_KINDS, IN_SELECTION) if with_prior else INTERVAL_KINDS,
    )
    calibration = [
        {"dataset": table.name, "ratio": target // r["budget"]}
        | {k: v for k, v in r.items() if k != "budget"}
        for r in interval_rows
    ]
    pairs = []
    for method, rel in pairwise.items():
        for b in rel["bins"]:
            pairs.append(
                {
                    "dataset": table.name,
                    "method": method,
                    "bin_low": b["low"],
                    "bin_high": b["high"],
                    "pairs": b["count"],
                    "mean_probability": b["mean_probability"],
                    "observed_frequency": b["observed"],
                    "ece": rel["ece"],
                    "brier": rel["brier"],
                }
            )
    return {"calibration": calibration, "pairwise": pairs}


def fit_errors(table: LossTable) -> list[dict]:
    """In-sample RMS log error of every law fitted on all non-zero sizes of every model.

    A table carries no NTK term, so the LensLLM law is the rectified law there: its row
    reuses the rectified fit.
    """
    sizes, losses = table.sizes.astype(float), table.losses
    keep = sizes > 0
    rows, fitted = [], {}
    for name in LAWS.names():
        law_cls = LAWS.get(name)
        key = "rectified" if name == "lens" else name  # without F the lens law is rectified
        if key not in fitted:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FitWarning)
                fitted[key] = law_cls().fit(sizes[keep], losses[:, keep])
        law = fitted[key]
        for model, err, ok in zip(table.models, law.rmse_log_, law.converged_, strict=True):
            rows.append(
                {
                    "dataset": table.name,
                    "model": model,
                    "law": name,
                    "rmse_log": round(float(err), 6),
                    "converged": bool(ok),
                }
            )
    return rows


def markdown_table(frame: pd.DataFrame, digits: int) -> str:
    head = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    counts = [pd.api.types.is_integer_dtype(dtype) for dtype in frame.dtypes]
    for idx, row in frame.iterrows():
        cells = [
            "n/a" if not np.isfinite(v) else f"{v:.0f}" if count else f"{v:.{digits}f}"
            for v, count in zip(row.to_numpy(float), counts, strict=True)
        ]
        out.append("| " + " | ".join([str(idx)] + cells) + " |")
    return "\n".join(out)


def write_report(
    out_dir: Path,
    selection: pd.DataFrame,
    fit_error: pd.DataFrame,
    calibration: pd.DataFrame | None = None,
    pairwise: pd.DataFrame | None = None,
    unrun: list[dict] | None = None,
) -> Path:
    """``report.md``: per dataset the metric tables of every method, the methods not run
    (``unrun``: "needs weights") and the fit errors; then the calibration section."""
    lines = [
        "# Replay benchmark",
        "",
        "Values in percent. Ratio = target size / budget. Cost = fraction of the compute of "
        "fine-tuning every model on the target size (docs/replay.md).",
        "",
    ]
    for dataset, part in selection.groupby("dataset", sort=False):
        lines.append(f"## {dataset}")
        for metric in METRICS:
            pivot = part[part.metric == metric].pivot_table(
                index="method", columns="ratio", values="value", sort=False
            )
            pivot.columns = [f"1/{c}" for c in pivot.columns]
            pivot["mean"] = pivot.mean(axis=1)
            digits = 2 if metric == "Cost" else 1
            lines += ["", f"### {metric}", "", markdown_table(100 * pivot, digits)]
        for row in unrun or []:
            if row["dataset"] == dataset:
                lines += ["", f"{row['method']}: not run, {row['reason']}"]
        errs = fit_error[fit_error.dataset == dataset].groupby("law").rmse_log.mean()
        lines += [
            "",
            "### In-sample fit error (mean RMS log error, all non-zero sizes)",
            "",
            markdown_table(errs.to_frame("rmse_log"), 5),
            "",
        ]
    if calibration is not None and not calibration.empty:
        lines.append(calibration_report(calibration, pairwise))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def calibration_summary(calibration: pd.DataFrame, pairwise: pd.DataFrame | None) -> pd.DataFrame:
    """Per dataset and method: coverage at each nominal level and the width and interval score
    at the highest, averaged over the budgets; pairwise ECE and Brier score."""
    top = calibration.nominal.max()
    out = []
    for (dataset, method), part in calibration.groupby(["dataset", "method"], sort=False):
        row = {"dataset": dataset, "method": method}
        for nominal, cov in part.groupby("nominal").coverage.mean().items():
            row[f"coverage@{nominal:g}"] = cov
        at_top = part[part.nominal == top]
        row[f"median log width@{top:g}"] = at_top.median_log_width.median()
        row[f"interval score@{top:g}"] = at_top.mean_interval_score.mean()
        if pairwise is not None and not pairwise.empty:
            pw = pairwise[(pairwise.dataset == dataset) & (pairwise.method == method)]
            row["pairwise ECE"] = pw.ece.iloc[0] if len(pw) else np.nan
            row["pairwise Brier"] = pw.brier.iloc[0] if len(pw) else np.nan
        out.append(row)
    return pd.DataFrame(out)


def pooled_summary(calibration: pd.DataFrame, pairwise: pd.DataFrame | None) -> pd.DataFrame:
    """Per method over every table: coverage at each level (weighted by budgets), the mean
    interval score at the highest level, and the pairwise ECE of the pooled pairs (from the
    per-table bins: the same ten bins, counts added)."""
    top = calibration.nominal.max()
    out = []
    for method, part in calibration.groupby("method", sort=False):
        row = {"method": method, "tables": part.dataset.nunique()}
        for nominal, cov in part.groupby("nominal").coverage.mean().items():
            row[f"coverage@{nominal:g}"] = cov
        row[f"interval score@{top:g}"] = part[part.nominal == top].mean_interval_score.mean()
        if pairwise is not None and not pairwise.empty:
            row["pairwise ECE"] = _pooled_ece(pairwise[pairwise.method == method])
        out.append(row)
    return pd.DataFrame(out)


def _pooled_ece(bins: pd.DataFrame) -> float:
    if bins.empty or bins.pairs.sum() == 0:
        return float("nan")
    b = bins.fillna({"mean_probability": 0.0, "observed_frequency": 0.0})
    p = (b.pairs * b.mean_probability).groupby(b.bin_low).sum()
    o = (b.pairs * b.observed_frequency).groupby(b.bin_low).sum()
    return float((p - o).abs().sum() / b.pairs.sum())


def calibration_report(calibration: pd.DataFrame, pairwise: pd.DataFrame | None) -> str:
    """The "Calibration" section of report.md."""
    lines = [
        "# Calibration",
        "",
        "How often the intervals hold the true target loss (coverage, averaged over the budgets) "
        "at each nominal level, their median width and mean interval score (Gneiting & Raftery; "
        "lower is better) on log losses, and the reliability of the pairwise probabilities "
        "P(i better than j) over every ordered pair of candidates and every budget (expected "
        'calibration error over ten bins, Brier score). "(heuristic)": the intervals the '
        'predictors had before calibration (`interval="heuristic"`). Calibrated intervals: '
        "lens_model/calibration.py.",
    ]
    summary = calibration_summary(calibration, pairwise)
    if calibration.dataset.nunique() > 1:
        pooled = pooled_summary(calibration, pairwise).set_index("method")
        lines += ["", "## Pooled over the tables", "", markdown_table(pooled, 3)]
    for dataset, part in summary.groupby("dataset", sort=False):
        frame = part.drop(columns="dataset").set_index("method")
        lines += ["", f"## {dataset}: calibration", "", markdown_table(frame, 3)]
        if "interval_method" in calibration:
            mine = calibration[
                (calibration.dataset == dataset) & ~calibration.method.str.contains("heuristic")
            ]
            none = mine[mine.interval_method == "none"].drop_duplicates(["method", "ratio"])
            if len(none):
                cells = ", ".join(f"{r.method} at 1/{r.ratio}" for r in none.itertuples())
                lines += [
                    "",
                    f"Too few probes for a backtest, so no interval stated: {cells} (left out "
                    "of the averages above).",
                ]
    return "\n".join(lines) + "\n"


def write_calibration(out_dir: Path, calibration: pd.DataFrame, pairwise: pd.DataFrame) -> None:
    """``calibration.csv`` and ``pairwise.csv``."""
    calibration[CALIBRATION_COLUMNS].to_csv(
        out_dir / "calibration.csv", index=False, float_format="%.6g"
    )
    pairwise[PAIRWISE_COLUMNS].to_csv(out_dir / "pairwise.csv", index=False, float_format="%.6g")


def plot_calibration(
    out_dir: Path, calibration: pd.DataFrame, pairwise: pd.DataFrame, dataset: str
) -> Path:
    """Reliability diagrams: nominal vs observed coverage per method (left), and predicted vs
    observed frequency of the pairwise probabilities (right). Heuristic intervals dashed."""
    plt = _pyplot()
    part = calibration[calibration.dataset == dataset]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    ax = axes[0]
    levels = sorted(part.nominal.unique())
    colour = _method_colours(part.method.unique())
    ax.plot([0, 1], [0, 1], color="grey", lw=1, label="perfect")
    for method, m in part.groupby("method", sort=False):
        cov = m.groupby("nominal").coverage.mean().reindex(levels)
        style = "--" if "heuristic" in method else "-"
        ax.plot(levels, cov.to_numpy(), style, color=colour[method], marker="o", label=method)
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("nominal level")
    ax.set_ylabel("observed coverage (mean over budgets)")
    ax.set_title(f"{dataset}: interval coverage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot([0, 1], [0, 1], color="grey", lw=1)
    pw = pairwise[pairwise.dataset == dataset]
    for method, m in pw.groupby("method", sort=False):
        m = m[m.pairs > 0]
        style = "--" if "heuristic" in method else "-"
        label = f"{method} (ECE {m.ece.iloc[0]:.3f})" if len(m) else method
        ax.plot(
            m.mean_probability,
            m.observed_frequency,
            style,
            color=colour.get(method),
            marker=".",
            label=label,
        )
    ax.set_xlabel("P(i better than j)")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"{dataset}: pairwise probabilities")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.11, top=0.92, wspace=0.22)
    path = out_dir / f"{dataset.lower()}_calibration.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _method_colours(methods) -> dict[str, str]:
    """One colour per selector, shared by its calibrated and heuristic rows."""
    bases = list(dict.fromkeys(m.split(" (")[0] for m in methods))
    palette = {b: f"C{i % 10}" for i, b in enumerate(bases)}
    return {m: palette[m.split(" (")[0]] for m in methods}


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported on first use (a benchmark without
    plots does not pay for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(out_dir: Path, selection: pd.DataFrame, dataset: str) -> Path:
    plt = _pyplot()
    part = selection[selection.dataset == dataset]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric in zip(axes, METRICS, strict=True):
        for method, m in part[part.metric == metric].groupby("method", sort=False):
            m = m.sort_values("max_data_num")
            ax.plot(
                m.max_data_num,
                100 * m.value,
                marker="o",
                label=method,
                lw=2.5 if method == "Lens" else 1.2,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (examples)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{dataset}: {metric} vs budget")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.92, wspace=0.22)
    path = out_dir / f"{dataset.lower()}_metrics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(out_dir: Path, table: LossTable, budget: int, laws: dict | None = None) -> Path:
    """Grid of every model's curve, the laws fitted up to ``budget`` and the extrapolation.

    ``laws`` may give the vanilla and rectified laws already fitted at ``budget`` (e.g. by the
    VanillaFit and RectifiedFit selectors, ``law_at``); missing ones are fitted here.
    """
    plt = _pyplot()
    sizes, losses = table.sizes.astype(float), table.losses
    target = sizes.max()
    fit_mask = sizes <= budget
    grid = np.geomspace(sizes[sizes > 0].min(), target, 80)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        for name in ("vanilla", "rectified"):
            law = (laws or {}).get(name)
            if law is None:
                law = LAWS.get(name)()
                m = fit_mask & ((sizes > 0) | law.uses_zero_shot)
                law.fit(sizes[m], losses[:, m])
            fits[name] = law.predict(grid)
    n = len(table.models)
    cols = min(6, n)
    rows = int(np.ceil(n / cols))
    height = 2.6 * rows + 0.5  # the title's half inch above the grid
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, height), squeeze=False)
    pos = sizes > 0
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        ax.loglog(sizes[pos], losses[i, pos], "k.", ms=4, label="measured")
        ax.loglog(sizes[pos & fit_mask], losses[i, pos & fit_mask], "ko", ms=4, mfc="none")
        for name, pred in fits.items():
            ax.loglog(grid, pred[i], lw=1, label=name)
        fm = pos & fit_mask
        slope, icpt, _ = fit_power_phase(sizes[fm], losses[i, fm])
        ax.loglog(
            [grid[0], target],
            np.exp(icpt + slope * np.log([grid[0], target])),
            "--",
            lw=1,
            label="AtS line",
        )
        ax.plot([target], [losses[i, -1]], "r*", ms=8, label="true at target")
        ax.set_title(table.models[i][-28:], fontsize=8)
        _light_log_ticks(ax, losses[i, pos])
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{table.name}: laws fitted on sizes <= {budget}, extrapolated to {int(target)}")
    # A fixed layout: tight_layout over 30 log-log axes took most of this plot's time.
    fig.subplots_adjust(
        left=0.2 / cols, right=0.99, bottom=0.3 / height, top=1 - 0.5 / height,
        wspace=0.25, hspace=0.45,
    )  # fmt: skip
    path = out_dir / f"{table.name.lower()}_curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _light_log_ticks(ax, losses: np.ndarray) -> None:
    """Three labelled loss ticks and no minor ticks on a log-log panel (matplotlib labels the
    minor ticks of a log axis spanning less than a decade, which is slow to draw)."""
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

    lo, hi = float(np.min(losses)), float(np.max(losses))
    ax.yaxis.set_major_locator(FixedLocator(np.geomspace(lo, hi, 3)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(NullLocator())
    ax.tick_params(labelsize=6)


COST_ACCURACY_COLUMNS = [
    "dataset",
    "method",
    "cost_fraction_setting",
    "ratio",
    "budget",
    "cost",
    "pear_corr",
    "rel_acc",
    "first_top",
    "spacing",
    "skipped",
]
HALF_COST = 0.5


def run_cost_accuracy(table: LossTable) -> list[dict]:
    """Rows of ``cost_accuracy.csv``: Lens and SuccessiveHalving per cost fraction, AtS and
    SubTuning, per budget."""
    target, budgets = budgets_for(table)
    rows = cost_accuracy_curve(table, budgets=budgets, target_size=target)
    return [{"dataset": table.name, "ratio": target // r["budget"]} | r for r in rows]


ADAPTIVE = ("Lens", "SuccessiveHalving")  # the methods the cost-accuracy curve caps per fraction
SHORT = {"SuccessiveHalving": "SH"}


def _setting(frame: pd.DataFrame) -> pd.Series:
    """'Lens@0.5' / 'SuccessiveHalving@0.5' for a capped row, the method name otherwise."""
    lens = frame.method + "@" + frame.cost_fraction_setting.map("{:g}".format)
    return lens.where(frame.cost_fraction_setting.notna(), frame.method)


def cost_accuracy_report(frame: pd.DataFrame) -> str:
    """The "Cost-accuracy" section of report.md (values in percent)."""
    lines = [
        "# Cost-accuracy",
        "",
        "Lens@f: Lens capped at f x AtS's cost at the same budget (settings from a fixed rule, "
        "lens_model/tradeoff.py); SuccessiveHalving@f (SH): successive halving under the same "
        "cap. Means over the budgets a setting ran at (in percent).",
    ]
    for dataset, part in frame.groupby("dataset", sort=False):
        part = part.assign(setting=_setting(part))
        ran = part[part.skipped.fillna("") == ""]
        means = ran.groupby("setting", sort=False)[["cost", "pear_corr", "rel_acc"]].mean()
        means.columns = ["Cost", "PearCorr", "RelAcc"]
        means.index.name = "method"
        lines += ["", f"## {dataset}: cost-accuracy", "", markdown_table(100 * means, 2)]
        runs = ran.groupby("setting", sort=False).size()
        short = runs[runs < part.budget.nunique()]
        for setting, n in short.items():
            reasons = part[(part.setting == setting) & (part.skipped.fillna("") != "")].skipped
            lines += ["", f"{setting} ran at {n} of {part.budget.nunique()} budgets; skipped: "]
            lines[-1] += "; ".join(reasons.drop_duplicates())
        per = _half_cost(ran)
        if per is not None:
            lines += ["", f"### Half-cost Lens and SuccessiveHalving vs AtS ({dataset})", ""]
            lines.append(markdown_table(per, 2))
    return "\n".join(lines) + "\n"


def _half_cost(ran: pd.DataFrame) -> pd.DataFrame | None:
    """Per budget: RelAcc and PearCorr (percent) and the cost relative to AtS of Lens@0.5 and
    SuccessiveHalving@0.5, beside AtS's RelAcc; None without a Lens@0.5 row."""
    ats = ran[ran.method == "AtS"].set_index("ratio")
    half = ran[ran.setting == f"Lens@{HALF_COST:g}"].set_index("ratio")
    if half.empty:
        return None
    columns = {}
    for method in ADAPTIVE:
        part = ran[ran.setting == f"{method}@{HALF_COST:g}"].set_index("ratio")
        name = f"{SHORT.get(method, method)}@{HALF_COST:g}"
        columns[f"RelAcc {name}"] = 100 * part.rel_acc.reindex(half.index)
        columns[f"PearCorr {name}"] = 100 * part.pear_corr.reindex(half.index)
        columns[f"Cost {name}/AtS"] = (part.cost / ats.cost).reindex(half.index)
    columns["RelAcc AtS"] = 100 * ats.rel_acc.reindex(half.index)
    per = pd.DataFrame(columns).sort_index()
    per.index = [f"1/{r}" for r in per.index]
    per.index.name = "budget"
    return per


def write_cost_accuracy(out_dir: Path, frame: pd.DataFrame) -> Path:
    """Write ``cost_accuracy.csv`` and append the "Cost-accuracy" section to report.md."""
    frame[COST_ACCURACY_COLUMNS].to_csv(
        out_dir / "cost_accuracy.csv", index=False, float_format="%.6g"
    )
    report = out_dir / "report.md"
    text = report.read_text() if report.is_file() else ""
    report.write_text(text + "\n" + cost_accuracy_report(frame))
    return out_dir / "cost_accuracy.csv"


def plot_cost_accuracy(out_dir: Path, frame: pd.DataFrame, dataset: str) -> Path:
    """RelAcc and PearCorr vs Cost (log x): Lens per fraction, SuccessiveHalving at half cost,
    AtS and SubTuning per budget."""
    plt = _pyplot()
    part = frame[(frame.dataset == dataset) & (frame.skipped.fillna("") == "")]
    part = part.assign(setting=_setting(part))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, (col, label) in zip(
        axes, (("rel_acc", "RelAcc"), ("pear_corr", "PearCorr")), strict=True
    ):
        for method, m in part[~part.method.isin(ADAPTIVE)].groupby("method", sort=False):
            m = m.sort_values("cost")
            ax.plot(m.cost, 100 * m[col], marker="s", lw=1.2, label=f"{method} (per budget)")
        # every Lens fraction; successive halving at the half-cost cap only (the peer of
        # Lens@0.5: its other fractions are in cost_accuracy.csv)
        capped = part[
            (part.method == "Lens") | (part.setting == f"SuccessiveHalving@{HALF_COST:g}")
        ]
        for setting, m in capped.groupby("setting", sort=False):
            m = m.sort_values("cost")
            peer = setting.startswith("SuccessiveHalving")
            ax.plot(m.cost, 100 * m[col], marker="^" if peer else "o", ls="--" if peer else ":",
                    lw=1.8 if peer else 1, label=setting)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("Cost (fraction of fine-tuning every model on the target)")
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(f"{dataset}: {label} vs Cost")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.2)
    path = out_dir / f"{dataset.lower()}_cost_accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
