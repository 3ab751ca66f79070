"""The bad-input catalogue, from the user's side.

Each bad input gives one clear ``lensllm: error:`` line and exit status 2 (no traceback), or a
flagged, explained exclusion; nothing is probed, tracked or registered for input that fails
early. Unit-level checks of the same inputs live next to their modules (test_config,
test_models, test_data, test_laws, test_probe); this file covers what those cannot see: the
command line, the selection result, out-of-memory probes and which failures are retried.
"""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flows import cli
from infra.stack import free_port
from lens_model.laws import FitWarning, RectifiedLaw
from lens_model.selectors import SELECTORS, RectifiedFit, TableProbes, ZeroShot
from tasks.fit import fit_and_select
from tasks.models import resolve_candidate
from tasks.probing.probe import probe_task, run_probe
from tasks.records.errors import (
    CandidateError,
    HubUnavailableError,
    ProbeDivergedError,
    ProbeOutOfMemoryError,
)
from tasks.records.schema import ProbeData, ProbeResult, ProbeSpec
from tasks.training import finetune as training_module
from tests.conftest import probe_result

LADDER = [16, 32, 64]
TARGET = 1024

# --------------------------------------------------------------------------------------------
# helpers


def _curve(scale: float) -> list[float]:
    """A decreasing rectified-law curve at sizes 0, 16, 32, 64 (bits per byte)."""
    sizes = np.array([0, *LADDER], dtype=float)
    return (scale * (1.0 + 3.0 / (1.0 + (sizes / 20.0) ** 0.6))).tolist()


def _probes(curves: dict[str, list[float]], **broken: dict) -> dict[str, list[ProbeResult]]:
    """Probe results per candidate; ``broken[name] = {size: {...overrides}}``."""
    return {
        name: [
            probe_result(name, size, loss, **broken.get(name, {}).get(size, {}))
            for size, loss in zip([0, *LADDER], losses, strict=True)
        ]
        for name, losses in curves.items()
    }


def _select(probes: dict, selector: str, **kw):
    n_params = {name: 1_000 * (i + 1) for i, name in enumerate(probes)}
    return fit_and_select(
        probes, n_params, target_size=TARGET, budget=LADDER[-1], selector=selector, **kw
    )


def _config(tmp: Path, candidates: list[str], **changes) -> dict:
    """test_select_flow's tiny offline selection (tiny-llama, WordNet, SQLite MLflow), ranked
    by AtS with NTK off, in its own experiment and registered model."""
    from tests.pipeline.test_select_flow import _config as tiny_selection

    return tiny_selection(
        tmp,
        candidates,
        **{
            "name": "bad-input",
            "selector": "AtS",
            "ntk": {"enabled": False},
            "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "bad-input"},
            "registry": {"model_name": "bad-input-model"},
            **changes,
        },
    )


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _nan_model(tmp: Path, name: str) -> str:
    """tiny-llama with a NaN final norm: every loss it gives is NaN, so every probe of it is
    NaN and every fine-tune diverges at its first step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_candidate("tiny-llama", cache_dir=tmp / "cache" / "models")
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(tmp / name, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp / name)
    return str(tmp / name)


def _tiny_copy(tmp: Path) -> str:
    """A valid second candidate: tiny-llama's folder, named by its path."""
    return resolve_candidate("tiny-llama", cache_dir=tmp / "cache" / "models")


def _cli(capfd, argv: list[str]) -> tuple[int, str, str]:
    """``lensllm ARGV`` in-process: (exit status, stdout, stderr incl. Prefect's log)."""
    rc = cli.main(argv)
    out, err = capfd.readouterr()
    return rc, out, err


@pytest.fixture
def console():
    """What a console handler on the root logger shows (Prefect's own console handler sits
    there too, but writes to the stream pytest had when Prefect was imported)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    yield stream
    logging.getLogger().removeHandler(handler)


def _error_line(err: str) -> str:
    """The CLI's own error line (Prefect may log after it, e.g. stopping its server)."""
    lines = [line for line in err.splitlines() if line.startswith("lensllm: error:")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# config errors: one line before Prefect starts


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("malformed", "is not valid YAML"),
        ({"probe": {"lerning_rate": 0.1}}, "unknown key 'probe.lerning_rate'"),
        ({"ladder": {"first_size": 64, "budget": 32}}, "is smaller than ladder.first_size"),
        ({"target_size": 32}, "target_size (32) is smaller than ladder.budget (64)"),
        ({"candidates": ["tiny-llama", "tiny-llama"]}, "duplicate names ['tiny-llama']"),
        ({"selector": "Atz"}, "selector: unknown selector 'Atz'. Did you mean 'AtS'"),
        (
            {"adaptive": {"enabled": True, "compute_fraction": 0.01}},
            "adaptive.compute_fraction=0.01 is too small",
        ),
    ],
    ids=[
        "malformed-yaml",
        "unknown-key",
        "budget-below-first-size",
        "target-below-budget",
        "duplicate-candidates",
        "unknown-selector",
        "adaptive-cap-too-small",
    ],
)
def test_config_errors_exit_2_before_prefect_starts(tmp_path, capfd, monkeypatch, change, message):
    import flows.select

    started = []
    monkeypatch.setattr(flows.select, "flow_with_runner", lambda cfg: started.append(cfg))
    path = tmp_path / "config.yaml"
    if change == "malformed":
        path.write_text("name: x\ncandidates: [tiny-llama, other\n")
    else:
        _write(path, {**_config(tmp_path, ["tiny-llama", "other"]), **change})
    rc, _, err = _cli(capfd, ["select", "--config", str(path)])
    assert rc == 2
    assert message in err and err.startswith("lensllm: error:")
    assert "Traceback" not in err
    assert not started  # no flow, no Prefect API, no probe


# --------------------------------------------------------------------------------------------
# bad candidates and data inside the flow: one line, nothing probed or tracked


def _headless_folder(tmp: Path) -> str:
    from transformers import BertConfig

    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    config.architectures = ["BertModel"]
    config.save_pretrained(tmp / "bert")
    return str(tmp / "bert")


def _dataset(tmp: Path, rows: list[dict], target_field: str = "a") -> dict:
    path = _jsonl(tmp / "data.jsonl", rows)
    return {
        "dataset": {
            "source": str(path),
            "prompt_field": "q",
            "target_field": target_field,
            "val_size": 16,
            "test_size": 16,
        }
    }


IN_FLOW = [
    pytest.param(
        lambda t: {"candidates": ["tiny-llama", "tiny-lama"]},
        ["Unknown candidate 'tiny-lama'", "Did you mean 'tiny-llama'"],
        id="unknown-model-id",
    ),
    pytest.param(
        lambda t: {"candidates": ["tiny-llama", str(t / "no" / "model")]},
        ["does not exist", "Give the path of a folder written by save_pretrained"],
        id="missing-local-folder",
    ),
    pytest.param(
        lambda t: {"candidates": ["tiny-llama", _headless_folder(t)]},
        ["BertModel, which has no causal-LM head", "Choose a checkpoint of a *ForCausalLM"],
        id="no-causal-lm-head",
    ),
    pytest.param(
        lambda t: _dataset(t, [{"q": f"word {i}", "a": f"meaning {i}"} for i in range(60)]),
        ["has 60 examples but val_size=16 + test_size=16 + budget=64 needs 96"],
        id="dataset-too-small",
    ),
    pytest.param(
        lambda t: _dataset(
            t, [{"q": f"word {i}", "a": "" if i % 3 == 0 else f"meaning {i}"} for i in range(300)]
        ),
        ["field 'a' is missing or empty in 100 of 300 rows", "fix the data or map another field"],
        id="empty-text-field",
    ),
    pytest.param(
        lambda t: _dataset(t, [{"q": f"word {i}", "answer": f"meaning {i}"} for i in range(300)]),
        ["target_field 'a' is not a column", "available columns: ['answer', 'q']"],
        id="missing-text-field",
    ),
]


@pytest.mark.integration
@pytest.mark.parametrize(("change", "messages"), IN_FLOW)
def test_bad_candidate_or_data_fails_in_one_line_before_any_probe(
    prefect_harness, tmp_path, capfd, console, change, messages
):
    config = _config(tmp_path, ["tiny-llama", _tiny_copy(tmp_path)])
    config.update(change(tmp_path))
    rc, out, err = _cli(capfd, ["select", "--config", _write(tmp_path / "c.yaml", config)])
    assert rc == 2, err
    line = _error_line(err)
    assert all(m in line for m in messages), line
    log = console.getvalue()
    assert "Encountered exception during execution" in log  # Prefect's line stays...
    assert "Traceback" not in log + err  # ...without its traceback
    assert "Selected:" not in out
    assert not (tmp_path / "cache" / "results").exists()  # no probe ran
    assert not (tmp_path / "mlflow.db").exists()  # nothing was tracked


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    """Only input errors become one line: a bug (here a KeyError, or a library's ValueError)
    propagates unchanged."""
    import flows.select

    def boom(cfg):
        raise KeyError("n_params")

    monkeypatch.setattr(flows.select, "flow_with_runner", boom)
    config = _write(tmp_path / "c.yaml", _config(tmp_path, ["tiny-llama", "other"]))
    with pytest.raises(KeyError, match="n_params"):
        cli.main(["select", "--config", config])
    assert not cli.is_input_error(np.linalg.LinAlgError("singular"))
    try:
        np.zeros(2).reshape(3)
    except ValueError as err:  # raised inside numpy, not by a raise statement of ours
        assert not cli.is_input_error(err)
    assert cli.is_input_error(CandidateError("x")) and cli.is_input_error(ProbeDivergedError("x"))


@pytest.mark.integration
def test_unreachable_tracking_server_exits_3_with_one_line(prefect_harness, tmp_path, capfd):
    """A server that does not answer is not bad input: its own exit status (3), one line that
    says to start it and re-run, and no probe spent."""
    uri = f"http://127.0.0.1:{free_port()}"
    config = _config(tmp_path, ["tiny-llama", _tiny_copy(tmp_path)], tracking={"uri": uri})
    rc, out, err = _cli(capfd, ["select", "--config", _write(tmp_path / "c.yaml", config)])
    assert rc == 3, err
    line = _error_line(err)
    assert f"MLflow tracking server {uri} is unreachable" in line and "lensllm stack up" in line
    assert "Traceback" not in err and "Selected:" not in out
    assert not (tmp_path / "cache" / "results").exists()  # no probe ran


def test_registry_command_against_a_server_that_is_down_exits_3(capfd):
    uri = f"http://127.0.0.1:{free_port()}"
    rc, _, err = _cli(capfd, ["registry", "rollback", "--name", "m", "--tracking-uri", uri])
    assert rc == 3
    assert "is unreachable" in _error_line(err)


def test_rollback_without_a_champion_is_bad_input(tmp_path, capfd):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc, _, err = _cli(capfd, ["registry", "rollback", "--name", "none-yet", "--tracking-uri", uri])
    assert rc == 2
    assert "has no champion to roll back" in _error_line(err)


# --------------------------------------------------------------------------------------------
# diverged / NaN probes: excluded with the reason, never ranked first, never registered


# NLPMetrics reads no probe: a diverged one cannot reach it (tests/pipeline/test_adaptive.py)
@pytest.mark.parametrize("selector", [n for n in SELECTORS.names() if n != "NLPMetrics"])
@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (
            {32: {"diverged": True, "train_loss_last": math.inf, "steps": 3}},
            "no finite test_bits_per_byte at 32 examples (fine-tuning on 32 examples diverged: "
            "training loss inf at step 3); lower probe.learning_rate",
        ),
        (
            {0: {"test_bits_per_byte": math.nan}},
            "no finite test_bits_per_byte at 0 (zero-shot) examples; the untrained model's loss "
            "is not finite: check its weights",
        ),
    ],
    ids=["diverged-flag", "nan-loss"],
)
def test_diverged_or_nan_candidate_is_excluded_and_never_selected(selector, broken, reason):
    # "best" would win every selector (lowest losses, most parameters) if its probe counted
    curves = {"a": _curve(1.0), "b": _curve(1.2), "best": _curve(0.5)}
    result = _select(_probes(curves, best=broken), selector)
    assert result.selected != "best"
    assert result.ranking[-1] == "best"
    best = result.candidates["best"]
    assert best.excluded == f"excluded: {reason}"
    assert math.isnan(best.predicted_loss) and best.laws == {}
    assert all(result.candidates[n].excluded is None for n in ("a", "b"))


def test_every_candidate_diverged_is_a_clear_error():
    curves = {"a": _curve(1.0), "b": _curve(1.2)}
    broken = {"diverged": True, "train_loss_last": math.nan, "steps": 1}
    probes = _probes(curves, a={16: broken}, b={64: broken})
    with pytest.raises(ProbeDivergedError, match="every candidate has a diverged") as err:
        _select(probes, "AtS")
    assert "a: excluded: no finite test_bits_per_byte at 16 examples" in str(err.value)
    assert "b: excluded: no finite test_bits_per_byte at 64 examples" in str(err.value)
    assert cli.is_input_error(err.value)


def test_nan_score_is_never_selected():
    """``np.argmin`` returns a NaN first; a selector must rank a NaN score last instead."""
    sizes = [0, 16, 32, 64]
    losses = [[math.nan, 2.0, 1.5, 1.2], [3.0, 2.5, 2.0, 1.8], [2.9, 2.4, 1.9, 1.7]]
    source = TableProbes(sizes, losses, [1, 1, 1], max_size=64)
    sel = ZeroShot().select(source, budget=64, target_size=TARGET)
    assert sel.selected == 2
    assert sel.ranking().tolist() == [2, 1, 0]


@pytest.mark.integration
@pytest.mark.slow
def test_cli_diverged_candidate_is_excluded_and_the_other_registered(
    prefect_harness, tmp_path, capfd, console
):
    # NTK on: the broken model's kernel is not finite; its features are skipped, not fatal
    config = _config(
        tmp_path, ["tiny-llama", _nan_model(tmp_path, "nan-model")], ntk={"enabled": True}
    )
    rc, out, err = _cli(capfd, ["select", "--config", _write(tmp_path / "c.yaml", config)])
    assert rc == 0, err
    assert f"NTK features of {config['candidates'][1]} skipped" in console.getvalue()
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("  ")}
    nan_row = rows[config["candidates"][1]]
    assert nan_row.lstrip().startswith("2.") and " nan " in nan_row
    assert "excluded: no finite test_bits_per_byte at 0 (zero-shot), 16, 32, 64 examples" in nan_row
    assert "check its weights" in nan_row
    assert "Selected: tiny-llama" in out and "Registered version 1" in out


@pytest.mark.integration
@pytest.mark.slow
def test_cli_all_candidates_diverged_is_an_error_and_nothing_is_registered(
    prefect_harness, tmp_path, capfd, console
):
    from tasks.tracking.client import Tracker

    names = [_nan_model(tmp_path, "nan-a"), _nan_model(tmp_path, "nan-b")]
    config = _config(tmp_path, names)
    rc, out, err = _cli(capfd, ["select", "--config", _write(tmp_path / "c.yaml", config)])
    assert rc == 2
    line = _error_line(err)
    assert "every candidate has a diverged or non-finite probe" in line
    assert all(f"{n}: excluded" in line for n in names)
    assert "Traceback" not in err + console.getvalue() and "Selected:" not in out
    if (tmp_path / "mlflow.db").exists():
        client = Tracker(config["tracking"]["uri"]).client
        assert client.search_registered_models() == []


# --------------------------------------------------------------------------------------------
# a law fit that does not converge: a warning and a flag, never a made-up number


def test_selector_fit_that_does_not_converge_is_warned_and_flagged(monkeypatch):
    rng = np.random.default_rng(3)
    curves = {
        n: (np.array(_curve(s)) * np.exp(0.02 * rng.standard_normal(4))).tolist()
        for n, s in (("a", 1.0), ("b", 1.2), ("c", 0.9))
    }
    probes = _probes(curves)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)  # a converged fit warns about nothing
        good = _select(probes, "RectifiedFit")
    assert all(c.fit_converged is True and not c.fit_warnings for c in good.candidates.values())

    one_step = partial(RectifiedLaw, max_iter=1)
    monkeypatch.setattr(RectifiedFit, "law_cls", one_step)
    with pytest.warns(FitWarning, match="fit problems.*RectifiedFit law fit did not converge"):
        bad = _select(probes, "RectifiedFit")
    sizes = np.array([0, *LADDER], dtype=float)
    table = np.array([curves[n] for n in curves])
    with pytest.warns(FitWarning):
        expected = one_step(seed=0).fit(sizes, table).predict([TARGET])[:, 0]
    for j, name in enumerate(curves):
        cand = bad.candidates[name]
        assert cand.fit_converged is False
        assert "the RectifiedFit law fit did not converge" in cand.fit_warnings[0]
        # the best fit found, flagged; never NaN or a substitute value
        assert cand.predicted_loss == pytest.approx(expected[j])
        assert math.isfinite(cand.predicted_loss)
    assert bad.selected in curves


def test_selectors_without_a_law_fit_report_no_convergence_flag():
    result = _select(_probes({"a": _curve(1.0), "b": _curve(1.2)}), "AtS")
    assert all(c.fit_converged is None for c in result.candidates.values())


# --------------------------------------------------------------------------------------------
# out of memory: which probe, and which settings to lower


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return resolve_candidate("tiny-llama", cache_dir=tmp_path_factory.mktemp("models"))


DATA = [{"prompt": f"Q{i}: say cat", "target": " cat"} for i in range(16)]
SPEC = ProbeSpec(batch_size=4, max_seq_len=32, device="cpu")
PROBE = {"threads": 1, "progress": False}


def _data(train: list[dict]) -> ProbeData:
    return ProbeData(source="test", train=train, val=[], test=DATA[8:12])


OOM_ERRORS = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu-allocator": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
        "you tried to allocate 1073741824 bytes."
    ),
    "cpu-allocator-linux": lambda: RuntimeError(
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes"
    ),
    "python": MemoryError,
}


def _raise(make, counter: list, *args, **kwargs):
    counter.append(1)
    raise make()


@pytest.mark.parametrize("kind", list(OOM_ERRORS))
def test_out_of_memory_while_training_names_the_probe_and_the_settings(tiny, monkeypatch, kind):
    calls: list = []
    monkeypatch.setattr(training_module, "train_step", partial(_raise, OOM_ERRORS[kind], calls))
    with pytest.raises(ProbeOutOfMemoryError) as err:
        run_probe(tiny, _data(DATA[:8]), SPEC, **PROBE)
    message = str(err.value)
    assert "while fine-tuning candidate 'tiny-llama' on 8 examples" in message
    assert "probe.batch_size=4, probe.max_seq_len=32" in message
    assert "lower probe.batch_size or probe.max_seq_len" in message
    assert "--set probe.batch_size=2" in message
    assert isinstance(err.value.__cause__, type(OOM_ERRORS[kind]()))  # the original, chained
    assert cli.is_input_error(err.value)


def test_out_of_memory_while_evaluating_zero_shot(tiny, monkeypatch):
    monkeypatch.setattr(training_module, "_target_nll", partial(_raise, OOM_ERRORS["cuda"], []))
    with pytest.raises(ProbeOutOfMemoryError, match=r"evaluating candidate 'tiny-llama' \(zero"):
        run_probe(tiny, _data([]), SPEC, **PROBE)


def test_other_runtime_errors_are_not_called_out_of_memory(tiny, monkeypatch):
    shapes = partial(_raise, lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"), [])
    monkeypatch.setattr(training_module, "train_step", shapes)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as err:
        run_probe(tiny, _data(DATA[:8]), SPEC, **PROBE)
    assert not isinstance(err.value, ProbeOutOfMemoryError)


@pytest.mark.integration
def test_cli_out_of_memory_is_one_line_naming_the_probe(
    prefect_harness, tmp_path, capfd, console, monkeypatch
):
    monkeypatch.setattr(
        training_module, "train_step", partial(_raise, OOM_ERRORS["cpu-allocator"], [])
    )
    config = _config(tmp_path, ["tiny-llama", _tiny_copy(tmp_path)])
    rc, out, err = _cli(capfd, ["select", "--config", _write(tmp_path / "c.yaml", config)])
    assert rc == 2
    line = _error_line(err)
    assert "out of memory on cpu while fine-tuning candidate 'tiny-llama' on 16 examples" in line
    assert "probe.batch_size=8, probe.max_seq_len=32" in line
    assert "Traceback" not in err + console.getvalue() and "Selected:" not in out


# --------------------------------------------------------------------------------------------
# retries: only transient errors (tasks called outside a flow: their logs stay local)

no_api_log_warning = pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted")


@pytest.mark.integration
@no_api_log_warning
def test_probe_failures_are_not_retried(prefect_harness, tiny, monkeypatch):
    """A probe is local compute on a resolved folder: its failures (bad input, out of memory,
    a bug) fail the same way again, so the probe task never retries."""
    assert probe_task.retries == 0
    calls: list = []
    monkeypatch.setattr(training_module, "train_step", partial(_raise, OOM_ERRORS["cuda"], calls))
    state = probe_task(tiny, _data(DATA[:8]), SPEC, return_state=True, **PROBE)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), ProbeOutOfMemoryError)
    assert len(calls) == 1


@pytest.mark.integration
@no_api_log_warning
@pytest.mark.parametrize(
    ("error", "offline", "attempts"),
    [
        (lambda: HubUnavailableError("hub unreachable"), False, 3),
        (lambda: HubUnavailableError("hub unreachable"), True, 1),
        (lambda: CandidateError("Unknown candidate 'x'"), False, 1),
        (lambda: FileNotFoundError("Model folder './x' does not exist"), False, 1),
        (lambda: KeyError("a bug"), False, 1),
    ],
    ids=["hub-down-online", "hub-offline-on-purpose", "unknown-name", "missing-folder", "bug"],
)
def test_candidate_resolution_retries_only_transient_errors(
    prefect_harness, monkeypatch, error, offline, attempts
):
    from tasks import models

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls: list = []
    monkeypatch.setattr(models, "resolve_candidate", partial(_raise, error, calls))
    task = models.resolve_candidate_task.with_options(retry_delay_seconds=0)
    state = task("org/model", return_state=True)
    assert state.is_failed()
    assert len(calls) == attempts
