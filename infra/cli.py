"""``lensllm stack up|down|status``, ``lensllm deploy``, ``lensllm worker`` and
``lensllm registry rollback`` (wired into flows/cli.py by ``add_commands``)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        help="stack folder (default: $LENSLLM_STACK_ROOT or .lensllm/stack in the project)",
    )


def _print_status(st: dict, rss: dict[str, int] | None = None) -> None:
    if not st:
        print("no stack yet; start it with `lensllm stack up`")
        return
    print(f"{'service':<8} {'pid':>8} {'port':>6}  {'state':<9} {'memory':>8}  url")
    for name, s in st.items():
        state = "healthy" if s["healthy"] else ("starting" if s["running"] else "stopped")
        if s.get("external"):
            state = "external" if s["healthy"] else "unreachable"
        memory = f"{rss[name] / 2**20:.0f} MiB" if rss and name in rss else "-"
        print(f"{name:<8} {s['pid'] or '-':>8} {s['port']:>6}  {state:<9} {memory:>8}  {s['url']}")


def _stack_up(args: argparse.Namespace) -> int:
    from infra import stack

    ports = {
        "s3": args.s3_port,
        "mlflow": args.mlflow_port,
        "prefect": args.prefect_port,
        "postgres": args.postgres_port,
    }
    result = stack.up(
        args.root,
        ports={k: v for k, v in ports.items() if v},
        timeout=args.timeout,
        db=args.db,
        db_url=args.db_url or os.environ.get("LENSLLM_STACK_DB_URL") or None,
    )
    if result["started"]:
        print(f"started {', '.join(result['started'])}; healthy after {result['seconds']:.1f} s")
    else:
        print("stack already running; nothing started")
    _print_status(result["status"], stack.rss_bytes(args.root))
    print("\nclients: " + " ".join(f"{k}={v}" for k, v in stack.stack_env(args.root).items()))
    base = stack.stack_root(args.root)
    print(f"S3 credentials: {base / 'credentials.json'} (mode 0600)")
    if "postgres" in result["status"]:
        print(f"PostgreSQL password or URL: {base / 'postgres.json'} (mode 0600)")
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from infra import stack

    stopped = stack.down(args.root, timeout=args.timeout)
    print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from infra import stack

    st = stack.status(args.root)
    rss = stack.rss_bytes(args.root)
    if args.json:
        for name, service in st.items():
            service["rss_bytes"] = rss.get(name)
        print(json.dumps(st, indent=2))
    else:
        _print_status(st, rss)
        if rss:
            print(f"resident memory: {sum(rss.values()) / 2**20:.0f} MiB in all")
    return 0 if st and all(s["healthy"] for s in st.values()) else 1


def _deploy(args: argparse.Namespace) -> int:
    from infra.deploy import POOL, deploy

    result = deploy(args.root)
    if result["pool_created"]:
        print(f"created work pool {POOL!r} (process)")
    for name, dep_id in result["deployments"].items():
        print(f"deployment {name} ({dep_id})")
    print(f"result storage block {result['result_storage']} (results: local cache + S3 mirror)")
    print(
        "start a worker with `lensllm worker`; run one with e.g.\n"
        "  prefect deployment run select-model/weekly-selection"
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from infra.deploy import worker_command

    cmd, env, cwd = worker_command(args.root, extra=args.prefect_args)
    print(f"worker on {env['PREFECT_API_URL']} (MLflow {env['MLFLOW_TRACKING_URI']}); Ctrl-C stops")
    sys.stdout.flush()
    os.chdir(cwd)
    os.execvpe(cmd[0], cmd, env)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from tasks.tracking.client import Tracker
    from tasks.tracking.model_registry import ModelRegistry

    tracker = Tracker.resolve(args.tracking_uri, ".lensllm")
    tracker.check_reachable()
    result = ModelRegistry(tracker, args.name).rollback(args.reason)
    print(
        f"{args.name}: champion moved back from v{result['rolled_back_from']} "
        f"to v{result['champion']} ({tracker.display_uri})"
    )
    return 0


def _history(args: argparse.Namespace) -> int:
    from tasks.tracking.client import Tracker
    from tasks.tracking.model_registry import ModelRegistry

    tracker = Tracker.resolve(args.tracking_uri, ".lensllm")
    tracker.check_reachable()
    entries = ModelRegistry(tracker, args.name).history()
    if not entries:
        print(f"{args.name}: no alias moves recorded ({tracker.display_uri})")
        return 0
    print(f"{args.name}: {len(entries)} moves of the champion alias ({tracker.display_uri})")
    for e in entries:
        print(
            f"  {e['seq']:>3}. {e['time']}  v{e['before'] or '-'} -> v{e['after'] or '-'}  "
            f"{e['decision']}: {e['reason']}"
        )
        links = {"selection": e.get("selection_run"), "flow run": e.get("flow_run")}
        shown = ", ".join(f"{k} {v}" for k, v in links.items() if v)
        if shown:
            print(f"       ({shown})")
    return 0


def add_commands(sub) -> None:
    """Add ``stack``, ``deploy``, ``worker`` and ``registry`` to the ``lensllm`` parser."""
    stack = sub.add_parser(
        "stack", help="local servers: S3 (SeaweedFS), MLflow, Prefect (and PostgreSQL)"
    )
    ssub = stack.add_subparsers(dest="stack_command", required=True)
    up = ssub.add_parser("up", help="start the servers on 127.0.0.1 (idempotent)")
    _root_arg(up)
    up.add_argument("--s3-port", type=int, help="S3 port (default 8333; saved for restarts)")
    up.add_argument("--mlflow-port", type=int, help="MLflow port (default 5000)")
    up.add_argument("--prefect-port", type=int, help="Prefect port (default 4200)")
    up.add_argument(
        "--db",
        choices=["sqlite", "postgres"],
        help="backend of MLflow and Prefect, chosen on the first up and kept (default sqlite; "
        "postgres: the stack's own PostgreSQL server on 127.0.0.1)",
    )
    up.add_argument(
        "--postgres-port", type=int, help="port of the stack's PostgreSQL (default 5433)"
    )
    up.add_argument(
        "--db-url",
        help="an existing PostgreSQL server instead of the stack's own: "
        "postgresql://USER:PASSWORD@HOST:PORT[/PREFIX] (default $LENSLLM_STACK_DB_URL; prefer "
        "the variable: a command line is visible to other users)",
    )
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to become healthy")
    up.set_defaults(func=_stack_up)
    down = ssub.add_parser("down", help="stop the servers (data is kept)")
    _root_arg(down)
    down.add_argument("--timeout", type=float, default=20.0, help="seconds before SIGKILL")
    down.set_defaults(func=_stack_down)
    st = ssub.add_parser("status", help="pid, port, health and memory of each server")
    _root_arg(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_stack_status)

    dep = sub.add_parser("deploy", help="register the Prefect deployments on the stack")
    _root_arg(dep)
    dep.set_defaults(func=_deploy)
    work = sub.add_parser("worker", help="run a Prefect process worker on lensllm-pool")
    _root_arg(work)
    work.add_argument("prefect_args", nargs="*", help="extra `prefect worker start` options")
    work.set_defaults(func=_worker)

    reg = sub.add_parser("registry", help="model registry operations")
    rsub = reg.add_subparsers(dest="registry_command", required=True)
    rb = rsub.add_parser("rollback", help="move the champion alias back to the previous version")
    rb.add_argument("--name", required=True, help="registered model name")
    rb.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else .lensllm/mlflow.db")
    rb.add_argument("--reason", help="why (recorded in the registry history)")
    rb.set_defaults(func=_rollback)
    hist = rsub.add_parser("history", help="every move of the champion alias, with its reason")
    hist.add_argument("--name", required=True, help="registered model name")
    hist.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else .lensllm/mlflow.db"
    )
    hist.set_defaults(func=_history)
