"""The ``lensllm`` command line (flows/cli/): every command is listed, and every command that
takes ``--tracking-uri`` uses ``$MLFLOW_TRACKING_URI`` when the option is not given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pandas as pd
import pytest

from flows.cli import lensllm, main
from flows.cli.cli_options import TRACKING_URI_HELP
from tests.conftest import rectified_table

REPO = Path(__file__).resolve().parents[2]


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """Every leaf command by its full name ("registry history")."""
    out = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out.update(_commands(command, f"{prefix}{name} "))
            if command.invoke_without_command:  # the group runs a command of its own too
                out[prefix + name] = command
        else:
            out[prefix + name] = command
    return out


def _takes_tracking_uri(command: click.Command) -> bool:
    return any(p.name == "tracking_uri" for p in command.params)


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out.split("Commands:")[1]
    for name in lensllm.commands:
        assert f"\n  {name} " in listed, name
    expected = {
        "select",
        "audit",
        "audit-spectra",
        "benchmark",
        "calibration",
        "ui",
        "models",
        "register",
    }
    assert expected | {"registry", "stack", "deploy", "worker"} == set(lensllm.commands)


def test_one_tracking_uri_option_everywhere():
    """Same option, same variable, same help text on every command that has one."""
    options = [
        param
        for command in _commands(lensllm).values()
        for param in command.params
        if "--tracking-uri" in getattr(param, "opts", [])
    ]
    assert len(options) == len(TRACKED) == 6
    assert {(p.envvar, p.help) for p in options} == {("MLFLOW_TRACKING_URI", TRACKING_URI_HELP)}


# ------------------------------------------------------------------ MLFLOW_TRACKING_URI honoured
def _table(tmp: Path) -> str:
    table = rectified_table([0, 16, 32, 64, 128, 256, 512, 1024], n=4, seed=1, name="ENV")
    frame = pd.DataFrame(table.losses, columns=[str(int(s)) for s in table.sizes])
    frame.insert(0, "config name", list(table.models))
    frame["size"], frame["family"] = table.model_sizes, list(table.families)
    frame.to_csv(tmp / "env.csv", index=False)
    return str(tmp / "env.csv")


def _model_and_test_file(tmp: Path) -> tuple[str, str]:
    from tasks.models import resolve_candidate

    rows = [{"prompt": f"Q{i}: say cat", "target": " cat"} for i in range(4)]
    (tmp / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return resolve_candidate("tiny-llama", cache_dir=tmp / "cache"), str(tmp / "test.jsonl")


def _register_argv(tmp: Path) -> list[str]:
    model, test_file = _model_and_test_file(tmp)
    keys = ["--name", "m", "--task-key", "t", "--selection-key", "s", "--test-file", test_file]
    return ["register", model, *keys]


# command -> (argv, how the test reads back the URI the command used)
TRACKED = {
    "ui": (lambda tmp: ["ui"], "execvp"),
    "calibration": (lambda tmp: ["calibration", "--out", str(tmp / "cal")], "store"),
    "registry history": (lambda tmp: ["registry", "history", "--name", "m"], "store"),
    "registry rollback": (lambda tmp: ["registry", "rollback", "--name", "m"], "store"),
    "benchmark": (
        lambda tmp: [
            "benchmark",
            "--table",
            _table(tmp),
            "--out",
            str(tmp / "b"),
            "--no-plots",
            "--methods",
            "AtS",
            "VanillaFit",
        ],  # fmt: skip
        "store",
    ),
    "register": (_register_argv, "register_flow"),
}


def test_every_command_with_a_tracking_uri_is_checked():
    assert {n for n, c in _commands(lensllm).items() if _takes_tracking_uri(c)} == set(TRACKED)


class _Exec(Exception):
    """Raised in place of ``os.execvp``: the command line is the one it would run."""


@pytest.mark.parametrize("name", sorted(TRACKED))
def test_command_honours_mlflow_tracking_uri(name, tmp_path, monkeypatch):
    """With only the variable set, the command works on its store: the SQLite file it names is
    created (and the default .lensllm/mlflow.db is not), or the URI is the one passed on."""
    make_argv, readback = TRACKED[name]
    argv = make_argv(tmp_path)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    db = tmp_path / "env-store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    used = _used_uri(readback, argv, monkeypatch)
    if readback == "store":
        assert db.is_file()
    else:
        assert used == uri
    assert not (work / ".lensllm" / "mlflow.db").exists()


def _used_uri(readback: str, argv: list[str], monkeypatch) -> str | None:
    seen = {}
    if readback == "execvp":

        def execvp(file, args):
            seen["uri"] = args[args.index("--backend-store-uri") + 1]
            raise _Exec

        monkeypatch.setattr(os, "execvp", execvp)
        with pytest.raises(_Exec):
            main(argv)
        return seen["uri"]
    if readback == "register_flow":
        import flows.register

        def register_flow(request, gate):
            seen["uri"] = request.tracking_uri
            return request  # anything with model_dump

        monkeypatch.setattr(flows.register, "register_flow", register_flow)
    assert main(argv) in (0, 2)  # rollback of a model without a champion is a user error
    return seen.get("uri")


def test_the_option_beats_the_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    given = f"sqlite:///{tmp_path / 'given.db'}"
    assert main(["registry", "history", "--name", "m", "--tracking-uri", given]) == 0
    assert f"({given})" in capsys.readouterr().out
    assert not (tmp_path / "env.db").exists()


def test_installed_entry_point_honours_mlflow_tracking_uri(tmp_path):
    """The console script, in its own process: `lensllm calibration` reads the variable's store."""
    script = Path(sys.executable).with_name("lensllm")
    if not script.is_file():
        pytest.skip(f"no installed lensllm next to {sys.executable}")
    uri = f"sqlite:///{tmp_path / 'stack.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [str(script), "calibration", "--out", str(tmp_path / "cal")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"in all experiments of {uri}" in done.stdout
    assert (tmp_path / "stack.db").is_file() and not (tmp_path / ".lensllm").exists()


def test_python_m_flows_cli_runs_the_same_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "registry", "history"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Missing option '--name'" in done.stderr


def test_select_talks_to_the_given_prefect_api(monkeypatch, capsys):
    """``--prefect-api-url`` is the Prefect API the selection flow runs against."""
    from prefect.settings import PREFECT_API_URL

    import flows.select

    seen = []

    def flow_with_runner(cfg):
        def run(**kwargs):
            seen.append(PREFECT_API_URL.value())
            raise KeyboardInterrupt  # stop before any work; the CLI reports an interruption

        return run

    monkeypatch.setattr(flows.select, "flow_with_runner", flow_with_runner)
    url = "http://127.0.0.1:9/api"
    config = str(REPO / "configs" / "demo.yaml")
    assert main(["select", "--config", config, "--prefect-api-url", url]) == 130
    assert seen == [url]


@pytest.mark.slow
@pytest.mark.integration
def test_register_registers_the_folder_in_the_store_the_variable_names(
    tmp_path, monkeypatch, prefect_harness, capsys
):
    """The real register flow through the command line: a version with alias champion (no
    champion yet) in the store that ``MLFLOW_TRACKING_URI`` names, and the same command again
    adds no version."""
    from tasks.tracking.client import Tracker
    from tasks.tracking.model_registry import ModelRegistry

    uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    argv = _register_argv(tmp_path)
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["version"] == "1" and "champion" in first["aliases"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1"
    versions = ModelRegistry(Tracker(uri), "m").client.search_model_versions("name = 'm'")
    assert [str(v.version) for v in versions] == ["1"]
