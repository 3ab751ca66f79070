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
    "--audit",
    "audits",
    multiple=True,
    metavar="PATH",
    help="an audit.json that `lensllm audit` wrote, or its folder, to count too (repeatable)",
)
@click.option(
    "--out",
    default="out/calibration",
    show_default=True,
    metavar="DIR",
    help="where the plot, live_calibration.csv (one row per check) and .json go",
)
@click.option(
    "--refit",
    metavar="FILE",
    help="also refit the cross-task error model on the loss tables of the --audit folders "
    "(the <task>.csv each audit wrote) and the --table files, and write it to FILE (e.g. "
    "configs/error_prior.json): each audit makes the intervals of the next selection better",
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="PATH",
    help="a further loss table for --refit, e.g. ../shared/benchmarks/flan.csv (repeatable)",
)
def calibration_command(
    experiment: str | None,
    tracking_uri: str | None,
    audits: tuple[str, ...],
    out: str,
    refit: str | None = None,
    tables: tuple[str, ...] = (),
) -> int:
    """The live calibration record: every candidate checked at the target, by every tracked
    selection and audit (and the audit.json files given), per interval level. With --refit,
    the error model is refitted on the audits' tables (and --table) and written."""
    from flows.cli.calibration_report import plural, print_record
    from tasks.reporting.live_record import (
        audit_table,
        check_rows,
        combine,
        read_audit,
        write_record,
    )
    from tasks.reporting.plots import plot_live_calibration
    from tasks.tracking.checked_runs import checked_selections

    if tables and not refit:
        raise click.UsageError("--table is for --refit FILE")
    on_disk = [read_audit(path) for path in audits]
    if refit:
        _refit(
            [audit_table(p, a.task) for p, a in zip(audits, on_disk, strict=True)], tables, refit
        )
    tracker = tracker_for(tracking_uri)
    tracker.check_reachable()
    record, left_out = combine(checked_selections(tracker, experiment), on_disk)
    where = f"experiment {experiment!r}" if experiment else "all experiments"
    where = f"{where} of {tracker.display_uri}"
    if audits:
        where += f", {plural(len(audits), 'audit file')}"
    for audit in left_out:
        print(f"{audit.source}: already tracked as run {audit.selection_run[:8]}, counted once")
    if not record:
        print(f"no finished selection with a measurement at the target in {where}; run a "
              "selection with validate.top_k >= 1, or pass --audit audit.json")  # fmt: skip
        return 0
    print_record(record, where)
    csv_path, json_path = write_record(record, out)
    plot = plot_live_calibration(check_rows(record), f"{out}/live_calibration.png")
    print(f"\nwritten: {csv_path}, {json_path}, {plot}")
    return 0


def _refit(audit_tables: list, tables: tuple[str, ...], out: str) -> None:
    """Refit the error model on the audits' tables and ``tables``; print what it fitted."""
    from flows.cli.commands_error_model import print_fitted
    from tasks.priors.prior_file import fit_prior_file

    paths = [str(t) for t in audit_tables] + list(tables)
    if len(paths) < 2:
        raise click.UsageError(
            "--refit needs at least two loss tables: pass audits with --audit and/or --table"
        )
    print(f"refitting the error model on {len(paths)} tables: {', '.join(paths)}")
    print_fitted(fit_prior_file(paths, out), out)
