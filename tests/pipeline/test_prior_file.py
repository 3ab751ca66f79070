"""The error-prior file (tasks/priors/prior_file.py) and ``lensllm calibration fit``: a file
rebuilds to the same numbers from the same tables, the shipped one loads, and a corrupt or
mismatched file fails with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli.cli_app import main
from tasks.priors.prior_file import SHIPPED, load_error_model, resolve_prior
from tasks.records.errors import ErrorPriorFileError, MissingFileError

ROOT = Path(__file__).resolve().parents[2]
ZOO = [
    str(ROOT / "benchmarks/results/zoo-wordnet/zoo-wordnet.csv"),
    str(ROOT / "benchmarks/results/zoo-manpages/zoo-manpages.csv"),
]


def _fit(out: Path) -> dict:
    args = ["calibration", "fit", *(a for t in ZOO for a in ("--table", t)), "--out", str(out)]
    assert main(args) == 0
    return json.loads(out.read_text())


def test_a_prior_file_rebuilds_to_the_same_numbers_from_the_same_tables(tmp_path):
    first, second = _fit(tmp_path / "a.json"), _fit(tmp_path / "b.json")
    assert first["families"] == second["families"]
    assert set(first["families"]) == {"line", "secant"}
    tables = first["provenance"]["tables"]
    assert [t["name"] for t in tables] == ["ZOO-WORDNET", "ZOO-MANPAGES"]
    assert all(len(t["sha256"]) == 64 for t in tables)
    assert "lensllm calibration fit --table" in first["provenance"]["command"]
    model = load_error_model(tmp_path / "a.json")
    secant = model.family("secant")
    assert secant.gamma == first["families"]["secant"]["gamma"]
    # one component per table, read back as written
    assert [c.task for c in secant.components] == ["ZOO-MANPAGES", "ZOO-WORDNET"]
    written = first["families"]["secant"]["components"][0]
    assert secant.components[0].prior.b == written["b"] and written["n_groups"] > 0
    # the longest horizon it was fitted on: past it, a selection is told its widening is guessed
    assert secant.max_horizon == first["families"]["secant"]["max_horizon"] >= 3


def test_a_version_1_file_reads_as_the_pooled_prior_it_holds(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text(
        '{"format": "lensllm-error-prior", "version": 1, "families": {"secant": '
        '{"gamma": 1.2, "slope_floor": 0.1, "m": 0, "kappa": 3, "a": 2, "b": 0.5}}}'
    )
    secant = load_error_model(path).family("secant")
    assert secant.components == () and secant.prior.b == 0.5
    assert secant.max_horizon is None  # not recorded then: no claim about it
    assert [task for task, _ in secant.task_priors()] == ["pooled"]


def test_the_shipped_file_loads_and_names_its_tables():
    model = resolve_prior("default")
    assert set(model.families) == {"line", "secant"}
    assert "FLAN" in model.source and SHIPPED.name in model.source
    assert resolve_prior("none") is None
    doc = json.loads(SHIPPED.read_text())
    assert "rows" not in json.dumps(doc).lower()  # parameters and provenance only


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not a readable JSON file"),
        ('{"format": "something-else", "version": 1}', "not a lensllm-error-prior file"),
        ('{"format": "lensllm-error-prior", "version": 99}', "version 99, this LensLLM reads"),
        (
            '{"format": "lensllm-error-prior", "version": 1, "families": {"spline": {}}}',
            "unknown predictor family 'spline'",
        ),
        (
            '{"format": "lensllm-error-prior", "version": 1, "families": {"secant": '
            '{"gamma": 1, "slope_floor": 0.1, "m": 0, "kappa": 1, "a": 2}}}',
            "needs finite numbers",
        ),
        (
            '{"format": "lensllm-error-prior", "version": 2, "families": {"secant": '
            '{"gamma": 1, "slope_floor": 0.1, "m": 0, "kappa": 1, "a": 2, "b": 1, '
            '"components": [{"task": "T", "m": 0, "kappa": 1, "a": 2, "b": "NaN"}]}}}',
            "each component task",
        ),
        (
            '{"format": "lensllm-error-prior", "version": 2, "families": {"secant": '
            '{"gamma": 1, "slope_floor": 0.1, "m": 0, "kappa": 1, "a": 2, "b": 1, '
            '"max_horizon": -3}}}',
            "max_horizon must be positive",
        ),
    ],
)
def test_a_corrupt_or_mismatched_file_fails_with_a_clear_error(tmp_path, content, match):
    path = tmp_path / "prior.json"
    path.write_text(content)
    with pytest.raises(ErrorPriorFileError, match=match):
        load_error_model(path)


def test_a_missing_file_says_how_to_rebuild_it(tmp_path):
    with pytest.raises(MissingFileError, match="lensllm calibration fit"):
        resolve_prior(str(tmp_path / "nope.json"))
