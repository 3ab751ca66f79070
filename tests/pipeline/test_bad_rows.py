"""A user's own data file through ``lensllm select``: a malformed record is one line that
names the file and the line, exit status 2, before any model is built or probe run;
``dataset.on_bad_rows: skip`` runs and records what it dropped; duplicates are named when they
leave a split short; and a successful run's terminal shows no ERROR line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.test_bad_inputs import _cli, _config, _error_line, _write

ROOT = Path(__file__).resolve().parents[2]
BAD_LINE = 58  # the line of bad.jsonl that is not JSON


@pytest.fixture
def console():
    """What a console handler on the root logger shows (the run logs, WARNING lines included)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    yield stream
    logging.getLogger().removeHandler(handler)


def _second(tmp: Path) -> str:
    """A second candidate that differs from tiny-llama (another init seed)."""
    from tests.pipeline.test_select_flow import _second_candidate

    return _second_candidate(tmp / "cache" / "models", tmp / "second")


def _good_rows(n: int = 400) -> list[dict]:
    return [{"q": f"word {i}", "a": f"meaning {i}"} for i in range(n)]


def _bad_jsonl(tmp: Path) -> Path:
    lines = [json.dumps(r) for r in _good_rows()]
    lines.insert(BAD_LINE - 1, '{"q": "broken", "a": nul}')
    path = tmp / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _list_jsonl(tmp: Path) -> Path:
    path = tmp / "lists.jsonl"
    path.write_text("".join(json.dumps([r["q"], r["a"]]) + "\n" for r in _good_rows()))
    return path


def _csv_without_a(tmp: Path) -> Path:
    path = tmp / "qa.csv"
    path.write_text("q,answer\n" + "".join(f"word {i},meaning {i}\n" for i in range(400)))
    return path


def _identical(tmp: Path) -> Path:
    path = tmp / "same.jsonl"
    path.write_text((json.dumps({"q": "word", "a": "meaning"}) + "\n") * 300)
    return path


def _dataset(path: Path, **extra) -> dict:
    return {
        "dataset": {
            "source": str(path),
            "prompt_field": "q",
            "target_field": "a",
            "val_size": 16,
            "test_size": 16,
            **extra,
        }
    }


@pytest.mark.integration
@pytest.mark.parametrize(
    ("write", "messages"),
    [
        (_bad_jsonl, [f"bad.jsonl line {BAD_LINE}: not valid JSON", "on_bad_rows: skip"]),
        (_csv_without_a, ["qa.csv line 1 (the header): target_field 'a' is not a column"]),
        (_list_jsonl, ["lists.jsonl line 1: the record is a list, not an object", "399 more"]),
        (_identical, ["same.jsonl' has 300 examples, 1 distinct (299 duplicates), in 1 group"]),
    ],
    ids=["not-json", "csv-missing-column", "records-are-lists", "identical-rows"],
)
def test_a_bad_data_file_is_one_line_before_any_model_or_probe(
    prefect_harness, tmp_path, capfd, write, messages
):
    # the second candidate is never resolved: the data fails first
    config = _config(tmp_path, ["tiny-llama", "other"], **_dataset(write(tmp_path)))
    rc, out, err = _cli(capfd, ["select", "--config", _write(tmp_path / "c.yaml", config)])
    assert rc == 2, err
    line = _error_line(err)
    assert str(tmp_path) in line and all(m in line for m in messages), line
    assert "Traceback" not in err and "Selected:" not in out
    assert not (tmp_path / "cache" / "models").exists()  # no model built or loaded
    assert not (tmp_path / "cache" / "results").exists()  # no probe ran
    assert not (tmp_path / "mlflow.db").exists()  # nothing was tracked


@pytest.mark.integration
@pytest.mark.slow
def test_skip_runs_the_bad_file_and_records_what_it_dropped(
    prefect_harness, tmp_path, capfd, console
):
    from tasks.tracking.client import Tracker

    config = _config(
        tmp_path,
        ["tiny-llama", _second(tmp_path)],
        validate={"top_k": 0},
        **_dataset(_bad_jsonl(tmp_path), on_bad_rows="skip"),
    )
    rc, out, err = _cli(capfd, ["select", "--config", _write(tmp_path / "c.yaml", config)])
    assert rc == 0, err
    assert "Selected:" in out
    logged = console.getvalue()
    assert "skipping 1 of 401 rows that cannot be read" in logged
    assert f"line {BAD_LINE}: not valid JSON" in logged
    client = Tracker(config["tracking"]["uri"]).client
    experiment = client.get_experiment_by_name(config["tracking"]["experiment"])
    (run,) = client.search_runs([experiment.experiment_id], "tags.`lensllm.run_kind` = 'selection'")
    assert run.data.params["data_bad_rows_skipped"] == f"1 (line {BAD_LINE})"
    assert run.data.params["data_examples"] == "400"


@pytest.mark.integration
@pytest.mark.slow
def test_a_successful_select_prints_no_error_line(tmp_path):
    """``lensllm select`` of the tiny config as a user runs it: its own embedded Prefect server,
    from a folder that is not the project's (so prefect.toml is not read), no internet."""
    from tests.pipeline.test_select_flow import _config as tiny_selection

    config = tiny_selection(tmp_path, ["tiny-llama", _second(tmp_path)])
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "HF_HUB_OFFLINE": "1",
    }
    for key in (
        "PREFECT_API_URL",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "DO_NOT_TRACK",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
    ):
        env.pop(key, None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "select",
            "--config",
            _write(tmp_path / "c.yaml", config),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Selected: " in done.stdout and "Ranking" in done.stdout  # the summary stays
    assert "probes | compute" in output  # and the progress line
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert errors == [], "\n".join(errors)
    # mlflow's hub model-card and licence warnings about a local folder are filtered out
    assert "WARNING mlflow.transformers" not in output
