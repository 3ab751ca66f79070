"""PostgreSQL for the stack: the backend store of the MLflow server and the Prefect database.

Two ways, chosen once per stack root (``lensllm stack up --db postgres``):

* **the stack's own server** (``managed``): Debian's ``postgresql`` binaries
  (``/usr/lib/postgresql/<version>/bin``) on a data directory under the stack root
  (``postgres/data``), listening on 127.0.0.1 only (no Unix socket), password authentication
  (SCRAM) for the role ``lensllm``, whose generated password is kept in ``postgres.json``
  (mode 0600). PostgreSQL refuses to run as root: as root, the server runs as the ``postgres``
  account (created by the Debian package), which owns the data directory; otherwise as the
  current user.
* **an existing server** (``--db-url postgresql://USER:PASSWORD@HOST:PORT[/PREFIX]``): the URL,
  password included, is kept in ``postgres.json`` only.

Either way the stack uses two databases on the server, ``<PREFIX>_mlflow`` and
``<PREFIX>_prefect`` (``PREFIX`` is ``lensllm`` unless the URL names another), created when
missing. The two projects each keep an ``alembic_version`` table, so they cannot share one.
Passwords never appear on a command line: the servers get their database URLs through the
environment (``MLFLOW_BACKEND_STORE_URI``, ``PREFECT_API_DATABASE_CONNECTION_URL``).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from infra.common import HOST, StackError, write_private

ROLE = "lensllm"
DEFAULT_PREFIX = "lensllm"
SERVER_ACCOUNT = "postgres"  # the account Debian's package creates; used when we are root
SETTINGS_FILE = "postgres.json"
DEBIAN_BIN = Path("/usr/lib/postgresql")
INSTALL_HINT = "install Debian's package with `make setup` (or `apt-get install postgresql`)"
_DRIVERS = {"mlflow": "postgresql+psycopg2", "prefect": "postgresql+asyncpg"}


# --------------------------------------------------------------------------------------------
# Settings (postgres.json, mode 0600)
# --------------------------------------------------------------------------------------------
def settings(root: Path) -> dict:
    """``{"password"}`` of the stack's own server, or ``{"url"}`` of an existing one."""
    path = root / SETTINGS_FILE
    if not path.is_file():
        raise StackError(f"{path} is missing; the stack's PostgreSQL password or URL was there")
    return json.loads(path.read_text())


def password(root: Path) -> str:
    """The generated password of the stack's own server (created on first use)."""
    path = root / SETTINGS_FILE
    if path.is_file():
        return json.loads(path.read_text())["password"]
    new = secrets.token_urlsafe(24)
    write_private(path, {"user": ROLE, "password": new})
    return new


def parse_url(url: str):
    """A SQLAlchemy URL of an existing server, checked: ``postgresql://USER[:PW]@HOST[:PORT]``
    with an optional database-name prefix as its path."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise StackError(
            "--db-url is not a URL; use postgresql://USER:PASSWORD@HOST:PORT[/PREFIX]"
        ) from err
    if parsed.get_backend_name() != "postgresql" or not parsed.host or not parsed.username:
        raise StackError(
            f"--db-url {display_url(parsed)} must be postgresql://USER:PASSWORD@HOST:PORT"
            "[/PREFIX] (a PostgreSQL server, with a host and a role)"
        )
    if parsed.database and not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", parsed.database):
        raise StackError(
            f"database prefix {parsed.database!r} in --db-url: use lowercase letters, digits "
            "and underscores (the stack adds _mlflow and _prefect)"
        )
    return parsed


def save_external(root: Path, url: str) -> str:
    """Keep an existing server's URL (0600); returns its display form (no password)."""
    parsed = parse_url(url)
    write_private(root / SETTINGS_FILE, {"url": parsed.render_as_string(hide_password=False)})
    return display_url(parsed)


def display_url(parsed) -> str:
    """``postgresql://user@host:port/prefix``: what status and errors show (no password)."""
    from sqlalchemy.engine import URL

    shown = URL.create(
        parsed.get_backend_name(),
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
    )
    return shown.render_as_string(hide_password=False)


def server_url(root: Path, cfg: dict):
    """SQLAlchemy URL of the server (role and password, no database)."""
    from sqlalchemy.engine import URL

    if cfg.get("db_external"):
        return parse_url(settings(root)["url"])
    return URL.create(
        "postgresql",
        username=ROLE,
        password=password(root),
        host=HOST,
        port=cfg["ports"]["postgres"],
        database=DEFAULT_PREFIX,
    )


def database_names(root: Path, cfg: dict) -> dict[str, str]:
    """``{"mlflow": "<prefix>_mlflow", "prefect": "<prefix>_prefect"}``."""
    prefix = server_url(root, cfg).database or DEFAULT_PREFIX
    return {service: f"{prefix}_{service}" for service in _DRIVERS}


def database_url(root: Path, cfg: dict, service: str) -> str:
    """The full URL (password included) that ``service`` (mlflow, prefect) connects with."""
    url = server_url(root, cfg).set(
        drivername=_DRIVERS[service], database=database_names(root, cfg)[service]
    )
    return url.render_as_string(hide_password=False)


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------
def _connect(root: Path, cfg: dict, database: str, timeout: float):
    import psycopg2

    url = server_url(root, cfg)
    return psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=database,
        connect_timeout=max(2, int(timeout)),
        **dict(url.query),
    )


def healthy(root: Path, cfg: dict, timeout: float = 3.0) -> bool:
    """True when the server accepts the role's password and answers ``SELECT 1``."""
    import psycopg2

    database = "postgres" if not cfg.get("db_external") else database_names(root, cfg)["mlflow"]
    try:
        conn = _connect(root, cfg, database, timeout)
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def ensure_databases(root: Path, cfg: dict, timeout: float = 10.0) -> list[str]:
    """Create ``<prefix>_mlflow`` and ``<prefix>_prefect`` when missing; returns those created.

    On an existing server the role needs CREATEDB for that (or an administrator creates them,
    owned by the role, as the error says).
    """
    import psycopg2
    from psycopg2 import sql

    names = list(database_names(root, cfg).values())
    url = server_url(root, cfg)
    try:
        conn = _connect(root, cfg, "postgres", timeout)
    except psycopg2.OperationalError as err:
        if all(_exists(root, cfg, name, timeout) for name in names):
            return []  # the role may reach its databases but not the maintenance one
        raise StackError(
            f"cannot connect to {display_url(url)} (database postgres) to create "
            f"{', '.join(names)}: {_first_line(err)}"
        ) from err
    created = []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    try:
                        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    except psycopg2.Error as err:
                        raise StackError(
                            f"role {url.username!r} cannot create database {name!r} on "
                            f"{display_url(url)} ({_first_line(err)}); ask its administrator "
                            f"for `CREATE DATABASE {name} OWNER {url.username};` (and the same "
                            "for the other of " + ", ".join(names) + ")"
                        ) from err
                    created.append(name)
    finally:
        conn.close()
    return created


def _exists(root: Path, cfg: dict, database: str, timeout: float) -> bool:
    import psycopg2

    try:
        _connect(root, cfg, database, timeout).close()
        return True
    except psycopg2.OperationalError:
        return False


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# --------------------------------------------------------------------------------------------
# The stack's own server
# --------------------------------------------------------------------------------------------
def bin_dir() -> Path:
    """Folder of ``initdb`` and ``postgres``: Debian's newest version, else from PATH."""
    versions = sorted(
        (p for p in DEBIAN_BIN.glob("*/bin") if (p / "postgres").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
    )
    if versions and (versions[-1] / "initdb").is_file():
        return versions[-1]
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).parent
    raise StackError(f"PostgreSQL server binaries not found under {DEBIAN_BIN}; {INSTALL_HINT}")


def server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: ``postgres`` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError as err:
        raise StackError(
            "PostgreSQL refuses to run as root and there is no `postgres` account to run it "
            f"as; {INSTALL_HINT} (it creates the account), or run the stack as another user"
        ) from err


def run_as(account: pwd.struct_passwd | None) -> dict:
    """``subprocess`` keyword arguments that run a child as ``account`` (umask 077)."""
    if account is None:
        return {"umask": 0o077}
    return {
        "user": account.pw_uid,
        "group": account.pw_gid,
        "extra_groups": os.getgrouplist(account.pw_name, account.pw_gid),
        "umask": 0o077,
    }


def _server_env() -> dict[str, str]:
    # A clean environment: nothing of ours (S3 keys, tokens) reaches the database server.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


def _check_reachable(folder: Path, account: pwd.struct_passwd) -> None:
    """Every folder above ``folder`` must let ``account`` through (x permission)."""
    parents = [str(p) for p in reversed(folder.parents)]
    script = 'for d; do test -x "$d" || { echo "$d"; exit 1; }; done'
    done = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *parents],
        capture_output=True,
        text=True,
        env=_server_env(),
        cwd="/",
        **run_as(account),
    )
    if done.returncode != 0:
        blocked = done.stdout.strip() or parents[-1]
        mode = oct(os.stat(blocked).st_mode & 0o777)[2:] if os.path.exists(blocked) else "?"
        raise StackError(
            f"PostgreSQL runs as the `{account.pw_name}` account, which cannot reach the stack "
            f"root {folder}: it may not enter {blocked} (mode {mode}). Choose a stack root it "
            f"can reach (--root or LENSLLM_STACK_ROOT, e.g. /srv/lensllm/stack) or let it "
            f"through with `chmod o+x {blocked}` (enter, not list)"
        )


def prepare(root: Path) -> Path:
    """Create the data directory on first use (``initdb``); returns it.

    As root: the stack root gets group ``postgres`` with mode 0710 (the server may pass through,
    not list), and ``postgres/`` belongs to the ``postgres`` account.
    """
    account = server_account()
    home = root / "postgres"
    data = home / "data"
    if (data / "PG_VERSION").is_file() and not (root / SETTINGS_FILE).is_file():
        raise StackError(
            f"{root / SETTINGS_FILE} is missing but the cluster {data} exists: its password "
            "was in that file. Restore the file, or start afresh on another stack root"
        )
    if account is not None:
        _check_reachable(root, account)
        os.chown(root, -1, account.pw_gid)
        os.chmod(root, 0o710)
        home.mkdir(mode=0o700, exist_ok=True)
        os.chown(home, account.pw_uid, account.pw_gid)
    else:
        home.mkdir(mode=0o700, exist_ok=True)
    if (data / "PG_VERSION").is_file():
        return data
    if data.exists():
        shutil.rmtree(data)  # an initdb that did not finish: nothing but its own files
    _initdb(home, data, account)
    return data


def _initdb(home: Path, data: Path, account: pwd.struct_passwd | None) -> None:
    # initdb reads the superuser password from a file; a pipe cannot be reopened by another
    # account, so a short-lived file of the server account's own (0600) is used and removed.
    pwfile = home / ".pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password(home.parent) + "\n")
    if account is not None:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    cmd = [str(bin_dir() / "initdb"), "-D", str(data), "-U", ROLE, f"--pwfile={pwfile}"]
    cmd += ["--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-instructions"]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=_server_env(), cwd=home, **run_as(account)
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise StackError(f"initdb failed for {data}:\n{done.stdout[-2000:]}\n{done.stderr}")


def command(root: Path, port: int) -> tuple[list[str], dict[str, str], dict]:
    """``(argv, env, popen keyword arguments)`` of the server on 127.0.0.1:``port``.

    No Unix socket: TCP on loopback with a password is the only way in.
    """
    cmd = [
        str(bin_dir() / "postgres"),
        "-D",
        str(root / "postgres" / "data"),
        "-p",
        str(port),
        "-c",
        f"listen_addresses={HOST}",
        "-c",
        "unix_socket_directories=",
    ]
    return cmd, _server_env(), {"cwd": root / "postgres", **run_as(server_account())}
