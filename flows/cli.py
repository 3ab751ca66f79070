"""The ``lensllm`` command line."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.records.errors import EXIT_BAD_INPUT, EXIT_UNREACHABLE, LensLLMUserError

EXIT_CODES_HELP = (
    f"exit status: 0 success, 1 a bug (with its traceback), {EXIT_BAD_INPUT} bad input "
    f"(config, data, candidates, tables), {EXIT_UNREACHABLE} a server that should answer does not "
    "(MLflow, S3, the hub): start it and run the same command again"
)


def is_input_error(err: BaseException) -> bool:
    """True when ``err`` was written for the user (a :class:`LensLLMUserError`): one line, its
    ``exit_code``. Anything else is a bug and keeps its traceback."""
    return isinstance(err, LensLLMUserError)


class _InputErrorWithoutTraceback(logging.Filter):
    """Prefect logs a failed task or flow run with the exception's traceback. For an input error
    the console shows Prefect's line without it (the CLI prints the one-line error last); the
    Prefect API's copy of the log keeps the traceback. The record is copied, not changed."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not is_input_error(exc):
            return True
        clean = logging.makeLogRecord(record.__dict__)
        clean.exc_info, clean.exc_text = None, None
        self.handler.handle(clean)
        return False


@contextmanager
def _no_tracebacks_for_input_errors() -> Iterator[None]:
    """While a flow runs: the console handlers drop the tracebacks of input errors."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    filters = [(h, _InputErrorWithoutTraceback(h)) for h in handlers]
    for handler, flt in filters:
        handler.addFilter(flt)
    try:
        yield
    finally:
        for handler, flt in filters:
            handler.removeFilter(flt)


def _benchmark(args: argparse.Namespace) -> int:
    from flows.config import check_selector
    from tasks.reporting.loss_tables import load_loss_table

    # Bad names and bad tables fail here, with one clear line, before any work.
    for name in args.methods or []:
        check_selector(name, "--methods")
    for path in args.table:
        load_loss_table(path)

    from flows.benchmark_run import BenchmarkSettings

    settings = BenchmarkSettings(
        tables=args.table,
        out_dir=args.out,
        methods=args.methods,
        tracking_uri=args.tracking_uri,
        plots=not args.no_plots,
    )
    if args.prefect:  # the same work as Prefect tasks, under a (temporary) Prefect API
        from flows.benchmark import benchmark_flow

        with _no_tracebacks_for_input_errors():
            result = benchmark_flow(settings)
    else:
        from flows.benchmark_run import run_benchmark

        # MLflow's import and store set-up run in a helper process alongside the work
        result = run_benchmark(settings, background_tracking=True, log=print)
    print(f"\nreplay benchmark written to {result['out_dir']} in {result['seconds']:.2f} s")
    print(
        f"  report: {result['out_dir']}/report.md   tables: selection.csv, calibration.csv, "
        "pairwise.csv"
    )
    print("  MLflow runs: " + ", ".join(f"{k}={v}" for k, v in result["runs"].items()))
    return 0


def _ui(args: argparse.Namespace) -> int:
    from tasks.tracking.client import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    print(
        f"MLflow UI on http://127.0.0.1:{args.port}/#/experiments?workflowType=machine_learning "
        f"(store {uri}); Ctrl-C to stop"
    )
    os.execvp(cmd[0], cmd)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lensllm",
        description="Select the open LLM to fine-tune from cheap probes.",
        epilog=EXIT_CODES_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser(
        "benchmark",
        help="replay selectors on published loss tables",
        description="Replay every selector on published loss tables: selection metrics, "
        "calibration of the intervals and pairwise probabilities, report, plots, MLflow run. "
        "Runs in-process without Prefect (its temporary API server alone takes ~20 s to "
        "start); --prefect runs the same work as the replay-benchmark Prefect flow.",
    )
    bench.add_argument(
        "--table",
        action="append",
        required=True,
        metavar="PATH",
        help="loss table CSV (repeatable); dataset name = file stem upper-cased",
    )
    bench.add_argument("--out", required=True, metavar="DIR", help="output folder")
    bench.add_argument("--methods", nargs="+", metavar="NAME", help="selectors (default: all)")
    bench.add_argument("--tracking-uri", help="MLflow tracking URI (default: .lensllm/mlflow.db)")
    bench.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    bench.add_argument(
        "--prefect",
        action="store_true",
        help="run as the replay-benchmark Prefect flow (tasks visible in Prefect; starts a "
        "temporary Prefect API when no server is configured)",
    )
    bench.set_defaults(func=_benchmark)

    ui = sub.add_parser("ui", help="open the MLflow UI on the local store (127.0.0.1)")
    ui.add_argument("--tracking-uri")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_ui)

    _add_pipeline_commands(sub)
    _add_stack_commands(sub)
    return parser


def _add_stack_commands(sub) -> None:
    """``stack``, ``deploy``, ``worker`` and ``registry`` live with the server code in infra/."""
    from infra.cli import add_commands

    add_commands(sub)


def _select(args: argparse.Namespace) -> int:
    from flows.config import load_config
    from flows.select import flow_with_runner

    overrides = list(args.set or [])
    cfg = load_config(args.config, overrides)  # fail on a bad config before starting Prefect
    with _no_tracebacks_for_input_errors():
        summary = flow_with_runner(cfg)(config_path=args.config, overrides=overrides)
    _print_summary(summary)
    return 0


def _print_ranking(result) -> None:
    """The ranking with each candidate's prediction, interval and P(best)."""
    how = (
        "no intervals"
        if result.interval_method == "none"
        else f"{result.level:.0%} {result.interval_method} intervals; P(best)"
    )
    print(f"\nRanking ({result.rank_on} predicted at {result.target_size} examples; {how}):")
    for row in result.ranking_rows():
        p_best = "" if row["p_best"] is None else f"P(best) {row['p_best']:.2f}"
        low, high = row["interval_low"], row["interval_high"]
        interval = f"[{low:.4g}, {high:.4g}]" if math.isfinite(low + high) else "(no interval)"
        print(
            f"  {row['rank']}. {row['candidate']:<28} {row['predicted_loss']:.4f} "
            f"{interval} {p_best} {row['note']}"
        )
    print(f"  intervals rest on: {result.interval_basis}")
    print(f"Selected: {result.selected}")


def _print_summary(summary) -> None:
    """What ``lensllm select`` prints at the end: ranking, compute, registry, where to look."""
    result = summary.result
    _print_ranking(result)
    b = summary.budget
    mode = "adaptive (Lens)" if summary.adaptive else "full ladder"
    print(
        f"Probe compute ({mode}, parameters x examples): {b.compute_spent:.4g} spent, "
        f"{b.ladder_share:.1%} of the full ladder ({b.compute_full_ladder:.4g}), "
        f"{b.full_finetune_share:.2%} of fine-tuning every candidate on the target "
        f"({b.compute_full_finetune_all:.4g}); {b.n_probes} probes, {b.flops_spent:.3g} FLOPs"
    )
    if summary.recorded_in:
        print(f"Nothing new logged: MLflow run {summary.recorded_in} already holds this selection")
    print(f"Curve plot: {summary.plot}")
    print(_mlflow_link(summary.tracking_uri, summary.run_id))
    if summary.timings:
        print(f"Time: {summary.time_split()}")
    # last, what a reader wants to know: was the prediction right, and what did the gate do
    for check in summary.checks:
        print(f"Realized vs predicted: {check.summary()}")
    if not summary.checks:
        print("Realized vs predicted: not checked (validate.top_k: 0)")
    reg = summary.registration
    if reg is None:
        print("Registry: disabled (registry.enabled: false)")
    else:
        print(
            f"Registered version {reg.version} (the winner trained on {reg.finetune_size} "
            f"examples) with aliases {reg.aliases}"
        )
        print(f"Gate: {'promoted to champion' if reg.promoted else 'not promoted'}: {reg.reason}")


def _mlflow_link(tracking_uri: str, run_id: str) -> str:
    """Where to see the run: its page in the MLflow UI, opened as model training (MLflow 3's
    UI opens experiments in GenAI mode unless the link says otherwise)."""
    from tasks.tracking.client import Tracker
    from tasks.tracking.secrets import display_uri

    experiment = Tracker(tracking_uri).client.get_run(run_id).info.experiment_id
    page = f"#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow run: {display_uri(tracking_uri).rstrip('/')}/{page}"
    return (
        f"MLflow run: http://127.0.0.1:5000/{page} after `lensllm ui` "
        f"(store {display_uri(tracking_uri)})"
    )


def _audit(args: argparse.Namespace) -> int:
    from flows.audit import audit_flow, check_auditable
    from flows.config import load_config

    overrides = list(args.set or [])
    check_auditable(load_config(args.config, overrides))  # bad input fails before Prefect
    with _no_tracebacks_for_input_errors():
        report = audit_flow(config_path=args.config, overrides=overrides, out_dir=args.out)
    print(f"\n{report['selector']} selected {report['selected']}; best measured at the target: "
          f"{report['best_measured']} (RelAcc {report['rel_acc']:.3f})")  # fmt: skip
    print(
        f"{report['intervals_held']} of {report['intervals_checked']} {report['level']:.0%} "
        f"{report['interval_method']} intervals held the measured loss"
    )
    print(f"loss table: {report['table']} (score it: lensllm benchmark --table {report['table']}"
          f" --out OUT)\nreport: {report['out_dir']}/audit.md")  # fmt: skip
    return 0


def _audit_spectra(args: argparse.Namespace) -> int:
    from flows.audit import audit_spectra_flow

    with _no_tracebacks_for_input_errors():
        spectral = audit_spectra_flow(out_dir=args.out, cache_dir=args.cache_dir)["spectral"]
    print(
        f"lowest {spectral['metric']} picks {spectral['selected']} (RelAcc "
        f"{spectral['rel_acc']:.3f}); report: {args.out}/audit.md"
    )
    return 0


def _calibration(args: argparse.Namespace) -> int:
    import statistics
    from pathlib import Path

    from tasks.records.schema import count_held
    from tasks.reporting.plots import plot_live_calibration
    from tasks.tracking.client import Tracker
    from tasks.tracking.runs import checked_selections

    tracker = Tracker.resolve(args.tracking_uri, ".lensllm")
    tracker.check_reachable()
    rows = checked_selections(tracker, args.experiment)
    where = f"experiment {args.experiment!r}" if args.experiment else "all experiments"
    if not rows:
        print(f"no finished selection with a measurement at the target in {where} "
              f"({tracker.display_uri}); run a selection with validate.top_k >= 1")  # fmt: skip
        return 0
    print(f"{len(rows)} checked selections in {where} ({tracker.display_uri}):")
    for r in rows:
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
    print("\nper selector: selections, intervals held (of those stated), median |log error|")
    for selector in sorted({r["selector"] for r in rows}):
        part = [r for r in rows if r["selector"] == selector]
        held, stated = count_held(r["held"] for r in part)
        share = f"{held / stated:.0%}" if stated else "no interval stated"
        error = statistics.median(abs(r["log_error"]) for r in part)
        print(f"  {selector:<12} {len(part):>4}  {held}/{stated} ({share})  {error:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"plot: {plot_live_calibration(rows, str(out / 'live_calibration.png'))}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from tasks.models import BUILTIN

    for name in BUILTIN.names():
        family = BUILTIN.get(name)
        print(f"{', '.join(family.examples):<58} {family.source}")
    return 0


def _models_prepare(args: argparse.Namespace) -> int:
    from tasks.models import prepare

    names = args.names or ["smollm2-135m"]
    for info in prepare(names, cache_dir=args.cache_dir, accept_license=args.accept_license):
        print(info)
    return 0


def _add_pipeline_commands(sub) -> None:
    sel = sub.add_parser("select", help="run a model selection from a YAML config")
    sel.add_argument("--config", required=True, help="YAML config (see configs/demo.yaml)")
    sel.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set probe.epochs=3 (repeatable)",
    )
    sel.set_defaults(func=_select)

    audit = sub.add_parser(
        "audit", help="a selection, then every candidate trained up to the target: regret"
    )
    audit.add_argument("--config", required=True, help="YAML config")
    audit.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    audit.add_argument("--out", required=True, metavar="DIR", help="output folder")
    audit.set_defaults(func=_audit)

    spectra = sub.add_parser(
        "audit-spectra",
        help="add the weight-spectrum (NLPmetrics) metrics to a written audit, re-run nothing",
    )
    spectra.add_argument("--out", required=True, metavar="DIR", help="the audit's folder")
    spectra.add_argument(
        "--cache-dir", default=".lensllm", metavar="DIR", help="cache with the models (models/)"
    )
    spectra.set_defaults(func=_audit_spectra)

    cal = sub.add_parser(
        "calibration", help="the live calibration record: predictions checked at the target"
    )
    cal.add_argument("--experiment", help="one MLflow experiment (default: all)")
    cal.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the local store")
    cal.add_argument("--out", default="out/calibration", metavar="DIR", help="where the plot goes")
    cal.set_defaults(func=_calibration)

    models = sub.add_parser("models", help="candidate models")
    msub = models.add_subparsers(dest="models_command", required=True)
    prep = msub.add_parser("prepare", help="install and convert built-in models (offline cache)")
    prep.add_argument("names", nargs="*", help="built-in names (default: smollm2-135m)")
    prep.add_argument(
        "--accept-license",
        metavar="LICENSE",
        help="accept the licence of models that need consent: 'gemma' accepts the Gemma Terms "
        "of Use (https://ai.google.dev/gemma/terms) for gemma3-270m*",
    )
    prep.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="model cache to build into (default: .lensllm/models in the project; a config's "
        "cache_dir + /models)",
    )
    prep.set_defaults(func=_models_prepare)
    listing = msub.add_parser("list", help="the built-in candidates and where they come from")
    listing.set_defaults(func=_models_list)


def main(argv: list[str] | None = None) -> int:
    """Run a ``lensllm`` command. An error written for the user (:func:`is_input_error`)
    prints one ``lensllm: error:`` line saying what to fix and returns its exit code (2 bad
    input, 3 a server that does not answer); other errors propagate with their traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LensLLMUserError as err:
        print(f"lensllm: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
