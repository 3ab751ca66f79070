"""``lensllm ui`` and ``lensllm calibration``: read what MLflow holds."""

from __future__ import annotations

import os
import sys

import click

from flows.cli.cli_options import tracker_for, tracking_uri_option


@click.command("ui")
@tracking_uri_option
@click.option("--port", type=int, default=5000, show_default=True, help="port on 127.0.0.1")
def ui_command(tracking_uri: str | None, port: int) -> int:
    """Open the MLflow UI on the store (127.0.0.1)."""
    uri = tracker_for(tracking_uri).uri
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    print(
        f"MLflow UI on http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning "
        f"(store {uri}); Ctrl-C to stop"
    )
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)
    return 0


@click.command(
    "calibration", short_help="The live calibration record: predictions checked at the target."
)
@click.option("--experiment", help="one MLflow experiment (default: all)")
@tracking_uri_option
@click.option(
    "--out",
    default="out/calibration",
    show_default=True,
    metavar="DIR",
    help="where the plot goes",
)
def calibration_command(experiment: str | None, tracking_uri: str | None, out: str) -> int:
    """The live calibration record: predictions checked at the target."""
    from pathlib import Path

    from tasks.reporting.plots import plot_live_calibration
    from tasks.tracking.runs import checked_selections

    tracker = tracker_for(tracking_uri)
    tracker.check_reachable()
    rows = checked_selections(tracker, experiment)
    where = f"experiment {experiment!r}" if experiment else "all experiments"
    if not rows:
        print(f"no finished selection with a measurement at the target in {where} "
              f"({tracker.display_uri}); run a selection with validate.top_k >= 1")  # fmt: skip
        return 0
    print(f"{len(rows)} checked selections in {where} ({tracker.display_uri}):")
    for r in rows:
        _print_checked(r)
    _print_per_selector(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    print(f"plot: {plot_live_calibration(rows, str(Path(out) / 'live_calibration.png'))}")
    return 0


def _print_checked(r: dict) -> None:
    interval = (
        "(no interval)"
        if r["held"] is None
        else f"[{r['interval_low']:.4g}, {r['interval_high']:.4g}] ({r['level']:.0%})"
    )
    verdict = {True: "held", False: "MISSED"}.get(r["held"], "")
    print(
        f"  {r['run_id'][:8]} {r['task']:<22} {r['selector']:<12} {r['winner']:<24} "
        f"predicted {r['predicted_loss']:.4f} {interval}, measured {r['measured_loss']:.4f}, "
        f"log error {r['log_error']:+.3f} {verdict}"
    )


def _print_per_selector(rows: list[dict]) -> None:
    import statistics

    from tasks.records.schema import count_held

    print("\nper selector: selections, intervals held (of those stated), median |log error|")
    for selector in sorted({r["selector"] for r in rows}):
        part = [r for r in rows if r["selector"] == selector]
        held, stated = count_held(r["held"] for r in part)
        share = f"{held / stated:.0%}" if stated else "no interval stated"
        error = statistics.median(abs(r["log_error"]) for r in part)
        print(f"  {selector:<12} {len(part):>4}  {held}/{stated} ({share})  {error:.3f}")
