"""Plots a reviewer looks at: every candidate's curve with its prediction, the NTK spectra."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402

from tasks.fit import curve_matrix  # noqa: E402
from tasks.records.schema import (  # noqa: E402
    NO_INTERVAL,
    NtkResult,
    ProbeResult,
    SelectionResult,
    TargetCheck,
    count_held,
)


def plot_selection(result: SelectionResult, probes: dict[str, list[ProbeResult]], path: str) -> str:
    """All candidates on one figure: measured points, rectified fit, prediction + interval."""
    sizes, table = curve_matrix(probes, result.rank_on)
    target = result.target_size
    x = np.array(sizes, dtype=float)
    pos = x > 0
    grid = np.geomspace(x[pos].min() / 2, target * 1.3, 120)
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for row, name in enumerate(probes):
        cand = result.candidates[name]
        color = f"C{row % 10}"
        label = name + (" (selected)" if name == result.selected else "")
        ax.plot(x[pos], table[row, pos], "o", color=color, label=label)
        if np.isfinite(table[row, 0]) and not pos[0]:
            ax.plot([grid[0]], [table[row, 0]], "s", color=color, mfc="none")
        rect = cand.laws.get("rectified")
        if rect:
            ax.plot(grid, _rectified_curve(rect.params, grid), ":", color=color, lw=1, alpha=0.6)
        pred, (lo, hi) = cand.predicted_loss, cand.interval
        measured = np.flatnonzero(pos & np.isfinite(table[row]))
        if np.isfinite(pred) and len(measured):
            last = measured[-1]  # the selector's extrapolation, from the largest probe
            ax.plot([x[last], target], [table[row, last], pred], "--", color=color, lw=1.2)
        if np.isfinite(pred):
            err = [[pred - lo], [hi - pred]] if np.isfinite(lo) and np.isfinite(hi) else None
            ax.errorbar([target], [pred], yerr=err, fmt="*", ms=12, color=color, capsize=4)
    ax.axvline(target, color="grey", ls=":", lw=1)
    _log_axes(ax)
    unit = "bits per byte" if result.rank_on == "bits_per_byte" else "nats per token"
    ax.set_xlabel("fine-tuning examples (squares at the left: zero-shot)")
    ax.set_ylabel(f"test loss ({unit})")
    interval = (
        NO_INTERVAL
        if result.interval_method == "none"
        else f"{result.level:.0%} {result.interval_method} interval"
    )
    ax.set_title(
        f"{result.selector}: predicted loss at {target} examples (stars; {interval})\n"
        "dashed: selector's extrapolation; dotted: rectified-law fit",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path, 110)


def _rectified_curve(params: dict, grid: np.ndarray) -> np.ndarray:
    b, d_l, beta, e = (np.asarray(params[k], dtype=float) for k in ("B", "D_l", "beta", "E"))
    return b / (d_l + grid**beta) + e


def plot_spectra(ntk: dict[str, NtkResult], f_terms: dict[str, float | None], path: str) -> str:
    """NTK eigenvalues and cumulative residual alignment of every candidate."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, feats) in enumerate(ntk.items()):
        lam = np.asarray(feats.eigenvalues, dtype=float)
        k = np.arange(1, len(lam) + 1)
        ax1.loglog(k, np.maximum(lam, 1e-30), "o-", ms=3, color=f"C{i}", label=name)
        ax2.semilogx(
            k,
            np.cumsum(feats.alignment),
            "o-",
            ms=3,
            color=f"C{i}",
            label=f"{name} (F={f_terms.get(name) or float('nan'):.3g})",
        )
    ax1.set_xlabel("eigenvalue index k")
    ax1.set_ylabel("lambda_k of Theta")
    ax1.set_title("NTK spectrum (LoRA parameters)")
    ax2.set_xlabel("eigenvalue index k")
    ax2.set_ylabel("cumulative (u_k . r0)^2 / ||r0||^2")
    ax2.set_title("alignment of the initial residual")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save(fig, path, 100)


def plot_prediction(
    result: SelectionResult, probes: list[ProbeResult], check: TargetCheck, path: str
) -> str:
    """The winner: its probes, the predicted curve from its largest probe to the target with
    the interval widening towards it, and the loss measured after training at the target."""
    rank_on, target = result.rank_on, result.target_size
    points = sorted((p.size, p.value(rank_on)) for p in probes if p.usable(rank_on))
    trained = [(d, v) for d, v in points if d > 0]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.plot(*zip(*trained, strict=True), "o", color="C0", label="probes (measured)")
    zero = [v for d, v in points if d == 0]
    if zero:
        ax.plot([trained[0][0] / 2], zero, "s", color="C0", mfc="none", label="zero-shot")
    d_max, loss_max = trained[-1]
    grid = np.geomspace(d_max, target, 60)
    frac = np.log(grid / d_max) / np.log(target / d_max)
    centre = np.exp(np.log(loss_max) + frac * np.log(check.predicted_loss / loss_max))
    ax.plot(grid, centre, "--", color="C1", label=f"prediction ({result.selector})")
    if np.isfinite(check.interval_low) and np.isfinite(check.interval_high):
        low = centre * np.exp(frac * np.log(check.interval_low / check.predicted_loss))
        high = centre * np.exp(frac * np.log(check.interval_high / check.predicted_loss))
        ax.fill_between(
            grid, low, high, color="C1", alpha=0.2,
            label=f"{check.level:.0%} {result.interval_method} interval at the target",
        )  # fmt: skip
        ax.errorbar(
            [target],
            [check.predicted_loss],
            yerr=[[check.predicted_loss - check.interval_low],
                  [check.interval_high - check.predicted_loss]],
            fmt="*", ms=12, color="C1", capsize=5,
        )  # fmt: skip
    else:  # too few probes to calibrate an interval: the prediction alone, and the plot says so
        ax.plot([target], [check.predicted_loss], "*", ms=12, color="C1",
                label="no interval at the target (too few probes to calibrate one)")  # fmt: skip
    ax.plot(
        [check.trained_examples],
        [check.measured_loss],
        "X",
        ms=12,
        color={True: "C2", False: "C3"}.get(check.held, "grey"),
        label=f"measured after training on {check.trained_examples} examples",
    )
    _log_axes(ax)
    unit = "bits per byte" if rank_on == "bits_per_byte" else "nats per token"
    ax.set_xlabel("fine-tuning examples")
    ax.set_ylabel(f"test loss ({unit})")
    ax.set_title(
        f"{check.candidate}: predicted {check.predicted_loss:.4f}, measured "
        f"{check.measured_loss:.4f}\nlog error {check.log_error:+.3f}; {check.verdict}",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path, 110)


def plot_live_calibration(rows: list[dict], path: str) -> str:
    """Every check at the target (one row per checked candidate): the predicted loss with its
    interval against the loss measured after training at the target (a point on the diagonal
    is a perfect prediction)."""
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for i, selector in enumerate(sorted({r["selector"] for r in rows})):
        part = [r for r in rows if r["selector"] == selector]
        measured = np.array([r["measured_loss"] for r in part])
        pred = np.array([r["predicted_loss"] for r in part])
        low = np.array([r["interval_low"] for r in part])
        high = np.array([r["interval_high"] for r in part])
        held, stated = count_held(r["held"] for r in part)
        ax.errorbar(
            measured, pred, yerr=[pred - low, high - pred], fmt="o", color=f"C{i}", capsize=3,
            label=f"{selector}: {held}/{stated} intervals held"
            + (f" ({len(part) - stated} without one)" if stated < len(part) else ""),
        )  # fmt: skip
    values = [
        v
        for r in rows
        for v in (r["measured_loss"], r["predicted_loss"], r["interval_low"], r["interval_high"])
        if np.isfinite(v)
    ]
    lo, hi = min(values) * 0.95, max(values) * 1.05
    ax.plot([lo, hi], [lo, hi], ":", color="grey", label="prediction = measurement")
    _log_axes(ax)
    ax.set_xlabel("measured after training at the target")
    ax.set_ylabel("predicted (interval)")
    ax.set_title(
        f"Live calibration record: {len(rows)} checks (every candidate trained at the target)",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path, 110)


def _log_axes(ax) -> None:
    """Log-log axes whose loss ticks read as plain numbers (2.9, not 2.9 x 10^0): a loss axis
    often spans less than a decade, where matplotlib labels the minor ticks in powers."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))


def _save(fig, path: str, dpi: int) -> str:
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
