"""The stack's database backend choice, without starting servers: the saved choice is kept,
switching is refused, bad ``--db-url`` values, an unreachable existing server and a stack root
the ``postgres`` account cannot reach fail with messages that say what to do (and never show a
password). The servers themselves run in ``tests/service/test_stack.py``."""

from __future__ import annotations

import json
import os
import pwd
import stat

import pytest

from flows.cli import main
from infra import postgres, stack

SECRET = "pw-" + os.urandom(6).hex()


def _saved_stack(root, *, data: bool = False, **fields) -> dict:
    """A stack root as ``up`` leaves it (``stack.json``), with ``fields`` on top; with ``data``,
    the files of a backend that holds data (an SQLite database, a PostgreSQL cluster)."""
    cfg = {"ports": dict(stack.DEFAULT_PORTS), "weed_ports": {}, "bucket": stack.BUCKET, **fields}
    root.mkdir(parents=True)
    (root / "stack.json").write_text(json.dumps(cfg))
    if data:
        marker = (
            "postgres/data/PG_VERSION" if fields.get("db") == "postgres" else "mlflow/mlflow.db"
        )
        (root / marker).parent.mkdir(parents=True)
        (root / marker).write_text("15\n")
    return cfg


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_first_up_defaults_to_sqlite_and_old_roots_are_sqlite(tmp_path):
    assert stack._backend(tmp_path, None, None, None) == {"db": "sqlite", "db_external": None}
    old = _saved_stack(tmp_path / "old")  # saved before the backend was recorded
    assert "db" not in old
    assert stack.load_config(tmp_path / "old")["db"] == "sqlite"
    assert stack.services_of(stack.load_config(tmp_path / "old")) == stack.SERVICES
    assert stack.services_of({"db": "postgres"}) == ("postgres", *stack.SERVICES)


@pytest.mark.parametrize(
    ("saved", "asked", "message"),
    [
        ({}, {"db": "postgres"}, "runs on SQLite; .* cannot switch to its own PostgreSQL"),
        ({"db": "postgres"}, {"db": "sqlite"}, "own PostgreSQL server; .* switch to SQLite"),
        (
            {"db": "postgres"},
            {"db_url": f"postgresql://u:{SECRET}@db.example:5432"},
            "cannot switch to the existing PostgreSQL server postgresql://u@db.example:5432",
        ),
        (
            {"db": "postgres", "db_external": "postgresql://u@db.example:5432/a"},
            {"db_url": f"postgresql://u:{SECRET}@db.example:5432/b"},
            "runs on the existing PostgreSQL server postgresql://u@db.example:5432/a",
        ),
    ],
)
def test_switching_backend_is_refused_before_anything_changes(tmp_path, saved, asked, message):
    root = tmp_path / "stack"
    _saved_stack(root, data=True, **saved)
    before = ((root / "stack.json").read_text(), _files(root))
    with pytest.raises(stack.StackError, match=message) as err:
        stack.up(root, timeout=5, **asked)
    assert SECRET not in str(err.value)
    assert "--root" in str(err.value)  # says what to do instead
    assert ((root / "stack.json").read_text(), _files(root)) == before


def test_a_stack_without_data_yet_may_switch(tmp_path):
    """A first ``up --db postgres`` that failed (say, before ``make setup``) traps nothing."""
    _saved_stack(tmp_path / "a", db="postgres")
    saved = stack.load_config(tmp_path / "a")
    assert stack._backend(tmp_path / "a", saved, "sqlite", None) == {
        "db": "sqlite",
        "db_external": None,
    }
    _saved_stack(tmp_path / "b")
    switched = stack._backend(tmp_path / "b", stack.load_config(tmp_path / "b"), "postgres", None)
    assert switched == {"db": "postgres", "db_external": None}


def test_the_saved_backend_is_kept_without_options(tmp_path):
    _saved_stack(tmp_path / "a", db="postgres")
    kept = stack._backend(tmp_path / "a", stack.load_config(tmp_path / "a"), None, None)
    assert kept == {"db": "postgres", "db_external": None}
    external = {"db": "postgres", "db_external": "postgresql://u@h:5432/x"}
    _saved_stack(tmp_path / "b", **external)
    saved = stack.load_config(tmp_path / "b")
    assert stack._backend(tmp_path / "b", saved, None, None) == external
    assert stack._backend(tmp_path / "b", saved, "postgres", None) == external
    # the same server, role and prefix with a new password: accepted
    assert stack._backend(tmp_path / "b", saved, None, "postgresql://u:new@h:5432/x") == external


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"mysql://u:{SECRET}@h/x", "must be postgresql://USER:PASSWORD@HOST"),
        (f"postgresql://:{SECRET}@h:5432", "with a host and a role"),
        ("postgresql:///lensllm", "with a host and a role"),
        (f"postgresql://u:{SECRET}@h:5432/Team-B", "database prefix 'Team-B'"),
        ("not a url", "is not a URL"),
    ],
)
def test_bad_db_url_is_a_clear_error(tmp_path, url, message):
    with pytest.raises(stack.StackError, match=message) as err:
        stack.up(tmp_path / "stack", db_url=url, timeout=5)
    assert SECRET not in str(err.value)
    assert not (tmp_path / "stack").exists()


def test_db_url_goes_with_postgres(tmp_path):
    with pytest.raises(stack.StackError, match="goes with --db postgres"):
        stack.up(tmp_path / "stack", db="sqlite", db_url="postgresql://u@h:5432")
    with pytest.raises(ValueError, match="unknown database backend 'mysql'"):
        stack.up(tmp_path / "stack", db="mysql")


def test_unreachable_existing_server_fails_before_starting_anything(tmp_path, capsys):
    """The URL's password is kept (0600) but shown nowhere; no server is started."""
    root = tmp_path / "stack"
    port = stack.free_port()  # nothing listens there
    url = f"postgresql://team:{SECRET}@127.0.0.1:{port}/team_b"
    status = main(["stack", "up", "--root", str(root), "--db-url", url, "--timeout", "5"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"cannot connect to postgresql://team@127.0.0.1:{port}/team_b" in err
    assert SECRET not in err
    assert stack.processes(root) == {}
    assert stat.S_IMODE((root / "postgres.json").stat().st_mode) == 0o600
    assert SECRET in (root / "postgres.json").read_text()
    saved = stack.load_config(root)
    assert saved["db_external"] == f"postgresql://team@127.0.0.1:{port}/team_b"
    assert SECRET not in (root / "stack.json").read_text()
    # the databases it would use, with the URL's prefix
    assert postgres.database_names(root, saved) == {
        "mlflow": "team_b_mlflow",
        "prefect": "team_b_prefect",
    }
    assert postgres.database_url(root, saved, "prefect").startswith("postgresql+asyncpg://team:")


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as `postgres` only for root")
def test_stack_root_the_postgres_account_cannot_reach_is_a_clear_error(tmp_path):
    pytest.importorskip("psycopg2")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres account (make setup installs Debian's postgresql)")
    blocked = tmp_path / "private"
    blocked.mkdir(mode=0o700)
    with pytest.raises(stack.StackError, match="`postgres` account, which cannot reach") as err:
        stack.up(blocked / "stack", db="postgres", timeout=5)
    assert "chmod o+x" in str(err.value)
    assert stack.processes(blocked / "stack") == {}
    assert not (blocked / "stack" / "postgres").exists()


def test_a_cluster_without_its_password_file_is_a_clear_error(tmp_path):
    root = tmp_path / "stack"
    _saved_stack(root, data=True, db="postgres")  # a cluster, and postgres.json deleted
    with pytest.raises(stack.StackError, match="postgres.json is missing but the cluster"):
        stack.up(root, timeout=5)
    assert stack.processes(root) == {}


def test_free_ports_are_below_the_ephemeral_range_and_never_repeat():
    """A port from the kernel's ephemeral range can become the local end of some outgoing
    connection between being chosen and its server starting (CI once lost a stack that way)."""
    low = stack._ephemeral_range()[0]
    ports = [stack.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= port < low for port in ports)
    assert not any(stack.port_in_use(port) for port in ports)


def test_a_port_something_listens_on_is_never_handed_out(monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind((stack.HOST, 0))
        sock.listen()
        taken = sock.getsockname()[1]
        draws = iter([taken, taken, 12345])
        monkeypatch.setattr(stack.random.Random, "randrange", lambda self, a, b: next(draws))
        monkeypatch.setattr(stack, "_ephemeral_range", lambda: (max(taken, 12346) + 1, 60999))
        monkeypatch.setattr(stack, "_HANDED_OUT", set())
        assert stack.free_port() == 12345


@pytest.mark.parametrize(
    ("extra", "limit"),
    [([], ["--limit", "1"]), (["--limit", "3"], ["--limit", "3"]), (["-l", "2"], ["-l", "2"])],
)
def test_the_worker_runs_one_flow_run_at_a_time_unless_told(monkeypatch, extra, limit):
    """``lensllm worker``'s argv (the environment of a running stack stood in for; the worker
    itself runs in tests/service/test_stack.py)."""
    from infra import deploy

    monkeypatch.setattr(deploy, "client_env", lambda root: {})
    cmd, env, _ = deploy.worker_command(extra=extra)
    assert cmd[1:7] == ["worker", "start", "--pool", deploy.POOL, "--type", "process"]
    flags = [a for a in cmd if a in ("--limit", "-l")]
    assert len(flags) == 1  # the user's own limit replaces the default, never both
    i = cmd.index(flags[0])
    assert cmd[i : i + 2] == limit
    assert env["LENSLLM_RESULT_STORAGE"] == deploy.RESULT_STORAGE


def test_the_worker_keeps_a_limit_given_with_an_equals_sign(monkeypatch):
    from infra import deploy

    monkeypatch.setattr(deploy, "client_env", lambda root: {})
    cmd, _, _ = deploy.worker_command(extra=["--limit=4"])
    assert "--limit=4" in cmd and "--limit" not in cmd
