"""``lensllm benchmark``: replay every selector on published loss tables."""

from __future__ import annotations

import click

from flows.cli.cli_options import (
    out_option,
    prefect_api,
    prefect_api_option,
    tracking_uri_option,
)
from flows.cli.console_errors import no_tracebacks_for_input_errors


@click.command(
    "benchmark",
    short_help="Replay selectors on published loss tables.",
    # `--methods A B C` takes several names: the ones after the first arrive as extra arguments
    context_settings={"allow_extra_args": True},
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    required=True,
    metavar="PATH",
    help="loss table CSV (repeatable); dataset name = file stem upper-cased",
)
@out_option
@click.option("--methods", metavar="NAME [NAME ...]", help="selectors (default: all)")
@tracking_uri_option
@click.option("--no-plots", is_flag=True, help="skip the PNG plots")
@click.option(
    "--prior",
    default="none",
    show_default=True,
    metavar="none|default|leave-one-table-out|FILE",
    help="the error model calibrated intervals start from: none (each selection's backtest "
    "alone), default (configs/error_prior.json), leave-one-table-out (each table scored with "
    "a model fitted on the other tables) or a file from `lensllm calibration fit`",
)
@click.option(
    "--prefect",
    is_flag=True,
    help="run as the replay-benchmark Prefect flow (tasks visible in Prefect; starts a "
    "temporary Prefect API when no server is configured)",
)
@prefect_api_option
@click.pass_context
def benchmark_command(ctx: click.Context, tables: tuple[str, ...], out: str, **opts) -> int:
    """Replay every selector on published loss tables: selection metrics, calibration of the
    intervals and pairwise probabilities, report, plots, MLflow run. Runs in-process without
    Prefect (its temporary API server alone takes ~20 s to start); --prefect runs the same work
    as the replay-benchmark Prefect flow."""
    methods = _method_names(ctx, opts["methods"])
    _check_inputs(tables, methods)
    from flows.benchmark_run import BenchmarkSettings

    settings = BenchmarkSettings(
        tables=list(tables),
        out_dir=out,
        methods=methods,
        tracking_uri=opts["tracking_uri"],
        plots=not opts["no_plots"],
        prior=opts["prior"],
    )
    _print_result(_run(settings, opts["prefect"], opts["prefect_api_url"]))
    return 0


def _method_names(ctx: click.Context, first: str | None) -> list[str] | None:
    if ctx.args and first is None:
        raise click.UsageError(f"unexpected arguments {' '.join(ctx.args)!r}", ctx)
    return None if first is None else [first, *ctx.args]


def _check_inputs(tables: tuple[str, ...], methods: list[str] | None) -> None:
    """Bad names and bad tables fail here, with one clear line, before any work."""
    from flows.config import check_selector
    from tasks.reporting.loss_tables import load_loss_table

    for name in methods or []:
        check_selector(name, "--methods")
    for path in tables:
        load_loss_table(path)


def _run(settings, prefect: bool, prefect_api_url: str | None) -> dict:
    if prefect:  # the same work as Prefect tasks, under a (temporary) Prefect API
        from flows.benchmark import benchmark_flow

        with prefect_api(prefect_api_url), no_tracebacks_for_input_errors():
            return benchmark_flow(settings)
    from flows.benchmark_run import run_benchmark

    # MLflow's import and store set-up run in a helper process alongside the work
    return run_benchmark(settings, background_tracking=True, log=print)


def _print_result(result: dict) -> None:
    print(f"\nreplay benchmark written to {result['out_dir']} in {result['seconds']:.2f} s")
    print(
        f"  report: {result['out_dir']}/report.md   tables: selection.csv, calibration.csv, "
        "pairwise.csv"
    )
    print("  MLflow runs: " + ", ".join(f"{k}={v}" for k, v in result["runs"].items()))
