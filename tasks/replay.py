"""Replay-benchmark tasks: run the selectors on a loss table, fit errors, reports and plots."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from prefect import task  # noqa: E402

from lens_model.laws import LAWS, FitWarning  # noqa: E402
from lens_model.phase import fit_power_phase  # noqa: E402
from lens_model.replay import replay  # noqa: E402
from lens_model.tradeoff import cost_accuracy_curve  # noqa: E402

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


def budgets_for(table: dict) -> tuple[int, list[int]]:
    """Target = the largest size of the table; budgets = target / ratio for ratios on its ladder."""
    sizes = table["sizes"]
    target = max(sizes)
    budgets = [target // r for r in RATIOS if target % r == 0 and target // r in sizes]
    if not budgets:
        raise ValueError(f"{table['name']}: no budget target/8 ... target/512 is on the ladder")
    return target, budgets


def run_replay(table: dict, methods: list[str]) -> list[dict]:
    """One row per (budget, method, metric), in the ``selection.csv`` format."""
    target, budgets = budgets_for(table)
    results = replay(
        np.array(table["sizes"]),
        np.array(table["losses"]),
        np.array(table["model_sizes"]),
        methods=methods,
        budgets=budgets,
        target_size=target,
    )
    rows = []
    for r in results:
        for metric, value in zip(METRICS, (r.pear_corr, r.rel_acc, r.cost), strict=True):
            rows.append(
                {
                    "dataset": table["name"],
                    "ratio": target // r.budget,
                    "max_data_num": r.budget,
                    "predict_data_num": target,
                    "metric": metric,
                    "method": r.method,
                    "value": round(float(value), 4),
                    "selected": table["models"][r.selection.selected],
                }
            )
    return rows


def fit_errors(table: dict) -> list[dict]:
    """In-sample RMS log error of every law fitted on all non-zero sizes of every model."""
    sizes = np.array(table["sizes"], dtype=float)
    losses = np.array(table["losses"], dtype=float)
    keep = sizes > 0
    rows = []
    for name in LAWS.names():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)
            law = LAWS.get(name)().fit(sizes[keep], losses[:, keep])
        for model, err, ok in zip(table["models"], law.rmse_log_, law.converged_, strict=True):
            rows.append(
                {
                    "dataset": table["name"],
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
    for idx, row in frame.iterrows():
        cells = [f"{v:.{digits}f}" for v in row.to_numpy(dtype=float)]
        out.append("| " + " | ".join([str(idx)] + cells) + " |")
    return "\n".join(out)


def write_report(out_dir: Path, selection: pd.DataFrame, fit_error: pd.DataFrame) -> Path:
    lines = [
        "# Replay benchmark",
        "",
        "Values in percent. Ratio = target size / budget. Cost = fraction of the compute of "
        "fine-tuning every model on the target size (design.md section 5).",
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
        errs = fit_error[fit_error.dataset == dataset].groupby("law").rmse_log.mean()
        lines += [
            "",
            "### In-sample fit error (mean RMS log error, all non-zero sizes)",
            "",
            markdown_table(errs.to_frame("rmse_log"), 5),
            "",
        ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_metrics(out_dir: Path, selection: pd.DataFrame, dataset: str) -> Path:
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
    fig.tight_layout()
    path = out_dir / f"{dataset.lower()}_metrics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(out_dir: Path, table: dict, budget: int) -> Path:
    """Grid of every model's curve, the laws fitted up to ``budget`` and the extrapolation."""
    sizes = np.array(table["sizes"], dtype=float)
    losses = np.array(table["losses"], dtype=float)
    target = sizes.max()
    fit_mask = sizes <= budget
    grid = np.geomspace(sizes[sizes > 0].min(), target, 80)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        for name in ("vanilla", "rectified"):
            law = LAWS.get(name)()
            m = fit_mask & ((sizes > 0) | law.uses_zero_shot)
            fits[name] = law.fit(sizes[m], losses[:, m]).predict(grid)
    n = len(table["models"])
    cols = 6
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
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
        ax.set_title(table["models"][i][-28:], fontsize=8)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(
        f"{table['name']}: laws fitted on sizes <= {budget}, extrapolated to {int(target)}"
    )
    fig.tight_layout()
    path = out_dir / f"{table['name'].lower()}_curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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


def run_cost_accuracy(table: dict) -> list[dict]:
    """Rows of ``cost_accuracy.csv``: Lens per cost fraction, AtS and SubTuning, per budget."""
    target, budgets = budgets_for(table)
    rows = cost_accuracy_curve(
        table["sizes"],
        np.array(table["losses"]),
        table["model_sizes"],
        budgets=budgets,
        target_size=target,
    )
    return [{"dataset": table["name"], "ratio": target // r["budget"]} | r for r in rows]


def _setting(frame: pd.DataFrame) -> pd.Series:
    """'Lens@0.5' for a Lens row, the method name otherwise."""
    lens = frame.method + "@" + frame.cost_fraction_setting.map("{:g}".format)
    return lens.where(frame.cost_fraction_setting.notna(), frame.method)


def cost_accuracy_report(frame: pd.DataFrame) -> str:
    """The "Cost-accuracy" section of report.md (values in percent)."""
    lines = [
        "# Cost-accuracy",
        "",
        "Lens@f: Lens capped at f x AtS's cost at the same budget (settings from a fixed rule, "
        "lens_model/tradeoff.py). Means over the budgets a setting ran at (in percent).",
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
        half = ran[ran.setting == f"Lens@{HALF_COST:g}"].set_index("ratio")
        ats = ran[ran.method == "AtS"].set_index("ratio")
        if half.empty:
            continue
        per = pd.DataFrame(
            {
                "RelAcc Lens@0.5": 100 * half.rel_acc,
                "RelAcc AtS": 100 * ats.rel_acc.reindex(half.index),
                "Cost ratio Lens/AtS": half.cost / ats.cost.reindex(half.index),
            }
        ).sort_index()
        per.index = [f"1/{r}" for r in per.index]
        per.index.name = "budget"
        lines += ["", f"### Half-cost Lens vs AtS per budget ({dataset})", ""]
        lines.append(markdown_table(per, 2))
    return "\n".join(lines) + "\n"


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
    """RelAcc and PearCorr vs Cost (log x): Lens per fraction, AtS and SubTuning per budget."""
    part = frame[(frame.dataset == dataset) & (frame.skipped.fillna("") == "")]
    part = part.assign(setting=_setting(part))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, (col, label) in zip(
        axes, (("rel_acc", "RelAcc"), ("pear_corr", "PearCorr")), strict=True
    ):
        for method, m in part[part.method != "Lens"].groupby("method", sort=False):
            m = m.sort_values("cost")
            ax.plot(m.cost, 100 * m[col], marker="s", lw=1.2, label=f"{method} (per budget)")
        lens = part[part.method == "Lens"]
        for setting, m in lens.groupby("setting", sort=False):
            m = m.sort_values("cost")
            ax.plot(m.cost, 100 * m[col], marker="o", ls=":", lw=1, label=setting)
        ax.set_xscale("log")
        ax.set_xlabel("Cost (fraction of fine-tuning every model on the target)")
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(f"{dataset}: {label} vs Cost")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{dataset.lower()}_cost_accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@task(name="cost-accuracy")
def cost_accuracy_task(table: dict) -> list[dict]:
    return run_cost_accuracy(table)


@task(name="replay-selectors")
def run_replay_task(table: dict, methods: list[str]) -> list[dict]:
    return run_replay(table, methods)


@task(name="fit-errors")
def fit_errors_task(table: dict) -> list[dict]:
    return fit_errors(table)
