"""The ``lensllm`` command line."""

from __future__ import annotations

import argparse
import os
import sys


def _benchmark(args: argparse.Namespace) -> int:
    from flows.benchmark import benchmark_flow

    result = benchmark_flow(
        tables=args.table,
        out_dir=args.out,
        methods=args.methods,
        tracking_uri=args.tracking_uri,
        plots=not args.no_plots,
    )
    print(f"\nreplay benchmark written to {result['out_dir']} in {result['seconds']:.2f} s")
    print(f"  report: {result['out_dir']}/report.md   table: {result['out_dir']}/selection.csv")
    print("  MLflow runs: " + ", ".join(f"{k}={v}" for k, v in result["runs"].items()))
    return 0


def _ui(args: argparse.Namespace) -> int:
    from tasks.tracking import default_tracking_uri

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
    print(f"MLflow UI on http://127.0.0.1:{args.port} (store {uri}); Ctrl-C to stop")
    os.execvp(cmd[0], cmd)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lensllm", description="Select the open LLM to fine-tune from cheap probes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("benchmark", help="replay selectors on published loss tables")
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
    bench.set_defaults(func=_benchmark)

    ui = sub.add_parser("ui", help="open the MLflow UI on the local store (127.0.0.1)")
    ui.add_argument("--tracking-uri")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_ui)

    _add_pipeline_commands(sub)
    return parser


def _add_pipeline_commands(sub) -> None:
    try:
        from flows import pipeline_cli
    except ImportError:
        return
    pipeline_cli.add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"lensllm: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
