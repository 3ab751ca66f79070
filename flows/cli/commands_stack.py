"""``lensllm stack up|down|status``, ``lensllm deploy`` and ``lensllm worker``: the commands
over the servers that ``infra/`` starts, checks and stops."""

from __future__ import annotations

import json
import os
import sys

import click

from flows.cli.cli_options import root_option


@click.group("stack", short_help="Local servers: S3, MLflow, Prefect (and PostgreSQL).")
def stack_group() -> None:
    """Local servers: S3 (SeaweedFS), MLflow, Prefect (and PostgreSQL)."""


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


@stack_group.command("up")
@root_option
@click.option("--s3-port", type=int, help="S3 port (default 8333; saved for restarts)")
@click.option("--mlflow-port", type=int, help="MLflow port (default 5000)")
@click.option("--prefect-port", type=int, help="Prefect port (default 4200)")
@click.option(
    "--db",
    type=click.Choice(["sqlite", "postgres"]),
    help="backend of MLflow and Prefect, chosen on the first up and kept (default sqlite; "
    "postgres: the stack's own PostgreSQL server on 127.0.0.1)",
)
@click.option("--postgres-port", type=int, help="port of the stack's PostgreSQL (default 5433)")
@click.option(
    "--db-url",
    envvar="LENSLLM_STACK_DB_URL",
    help="an existing PostgreSQL server instead of the stack's own: "
    "postgresql://USER:PASSWORD@HOST:PORT[/PREFIX] (default $LENSLLM_STACK_DB_URL; prefer "
    "the variable: a command line is visible to other users)",
)
@click.option("--timeout", type=float, default=180.0, show_default=True, help="seconds to become "
              "healthy")  # fmt: skip
def up_command(root: str | None, timeout: float, db: str | None, db_url: str | None, **ports):
    """Start the servers on 127.0.0.1 (idempotent)."""
    from infra import stack

    ports = {name.removesuffix("_port"): port for name, port in ports.items() if port}
    result = stack.up(root, ports=ports, timeout=timeout, db=db, db_url=db_url or None)
    if result["started"]:
        print(f"started {', '.join(result['started'])}; healthy after {result['seconds']:.1f} s")
    else:
        print("stack already running; nothing started")
    _print_status(result["status"], stack.rss_bytes(root))
    print("\nclients: " + " ".join(f"{k}={v}" for k, v in stack.stack_env(root).items()))
    base = stack.stack_root(root)
    print(f"S3 credentials: {base / 'credentials.json'} (mode 0600)")
    if "postgres" in result["status"]:
        print(f"PostgreSQL password or URL: {base / 'postgres.json'} (mode 0600)")
    return 0


@stack_group.command("down")
@root_option
@click.option("--timeout", type=float, default=20.0, show_default=True, help="seconds before "
              "SIGKILL")  # fmt: skip
def down_command(root: str | None, timeout: float) -> int:
    """Stop the servers (data is kept)."""
    from infra import stack

    stopped = stack.down(root, timeout=timeout)
    print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


@stack_group.command("status")
@root_option
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def status_command(root: str | None, as_json: bool) -> int:
    """Pid, port, health and memory of each server (exit status 1 unless all are healthy)."""
    from infra import stack

    st = stack.status(root)
    rss = stack.rss_bytes(root)
    if as_json:
        for name, service in st.items():
            service["rss_bytes"] = rss.get(name)
        print(json.dumps(st, indent=2))
    else:
        _print_status(st, rss)
        if rss:
            print(f"resident memory: {sum(rss.values()) / 2**20:.0f} MiB in all")
    return 0 if st and all(s["healthy"] for s in st.values()) else 1


@click.command("deploy")
@root_option
def deploy_command(root: str | None) -> int:
    """Register the Prefect deployments on the stack."""
    from infra.deploy import POOL, deploy

    result = deploy(root)
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


@click.command(
    "worker",
    short_help="Run a Prefect process worker on lensllm-pool.",
    context_settings={"ignore_unknown_options": True},
)
@root_option
@click.argument("prefect_args", nargs=-1, type=click.UNPROCESSED)
def worker_command(root: str | None, prefect_args: tuple[str, ...]) -> int:
    """Run a Prefect process worker on lensllm-pool, one flow run at a time (each uses every
    core; `--limit N` allows N); PREFECT_ARGS go to `prefect worker start`."""
    from infra.deploy import worker_command as command

    cmd, env, cwd = command(root, extra=list(prefect_args))
    limit = next((b for a, b in zip(cmd, cmd[1:], strict=False) if a in ("--limit", "-l")), None)
    at_once = f"{limit} flow run(s) at a time" if limit else "flow runs as --limit says"
    print(
        f"worker on {env['PREFECT_API_URL']} (MLflow {env['MLFLOW_TRACKING_URI']}), {at_once}; "
        "Ctrl-C stops"
    )
    sys.stdout.flush()
    os.chdir(cwd)
    os.execvpe(cmd[0], cmd, env)
    return 0
