"""The promotion gate on measured loss, against a real MLflow registry with real (tiny) models:
champion and challenger are compared on the same test examples, the champion is re-measured
when the test split changes (and only then), a better prediction does not beat a worse
measurement, and a rolled-back version is not re-promoted."""

from __future__ import annotations

from pathlib import Path

import pytest

import tasks.registration
from tasks.data.splits import fingerprint
from tasks.probing.probe import run_probe
from tasks.records.schema import GateInputs, ProbeData, ProbeSpec, RegistrationRequest
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.model_registry import ModelRegistry
from tasks.training.measure import measure_folder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "gate-test"
# fp32: the registered model reloads through MLflow with its default attention, and bf16 eager
# and sdpa attention differ in the fifth digit; the gate's bookkeeping is what is tested here
SPEC = ProbeSpec(batch_size=4, max_seq_len=32, device="cpu", learning_rate=0.02, precision="fp32")


def _rows(start: int, n: int) -> list[dict]:
    return [{"prompt": f"Q{i}: say cat", "target": " cat"} for i in range(start, start + n)]


TRAIN = _rows(0, 32)
SPLIT_A, SPLIT_B = _rows(100, 24), _rows(200, 24)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """The untrained tiny model, and two fine-tunes of it: a short one and a longer, better
    one (the target ' cat' is learnable, so more training lowers every test loss)."""
    from tasks.models import resolve_candidate

    tmp = tmp_path_factory.mktemp("gate-models")
    base = resolve_candidate("tiny-llama", cache_dir=tmp / "cache")
    out = {"base": base}
    for name, epochs in (("short", 1), ("long", 6)):
        data = ProbeData(source="test", train=TRAIN, val=[], test=SPLIT_A)
        spec = SPEC.model_copy(update={"epochs": epochs})
        run_probe(base, data, spec, save_dir=str(tmp / name), progress=False)
        out[name] = str(tmp / name)
    return out


def _gate(model_dir: str, split: list[dict]) -> GateInputs:
    fp = fingerprint(split)
    return GateInputs(
        test=split,
        test_fingerprint=fp,
        spec=SPEC,
        rank_on="bits_per_byte",
        measurement=measure_folder(model_dir, split, SPEC, rank_on="bits_per_byte", fingerprint=fp),
        margin=0.0,
        min_confidence=0.9,
    )


def _register(uri, model_dir, key, predicted, split, lock_dir, data=None):
    from flows.register import register_flow

    request = RegistrationRequest(
        model_dir=model_dir,
        registered_name=NAME,
        task_key="cats",
        selection_key=key,
        predicted_loss=predicted,
        interval=(predicted * 0.9, predicted * 1.1),
        selector="test",
        data_fingerprint=data,
        tracking_uri=uri,
        experiment="gate-test",
    )
    return register_flow(request, _gate(model_dir, split), lock_dir=lock_dir)


def test_measured_gate(prefect_harness, models, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = ModelRegistry(Tracker(uri), NAME)
    calls: list[str] = []
    real = tasks.registration.measure_registered

    def counting(*args, **kwargs):
        calls.append(args[2])  # the version measured
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.registration, "measure_registered", counting)
    locks = str(tmp_path / "locks")

    first = _register(uri, models["short"], "sel-1", 2.0, SPLIT_A, locks)
    assert first.promoted and first.version == "1"
    assert registry.alias_version(T.ALIAS_CHAMPION) == "1"

    # a challenger whose prediction is far better but whose measured loss is worse: kept out
    second = _register(uri, models["base"], "sel-2", 0.01, SPLIT_A, locks)
    assert not second.promoted and "not better" in second.reason
    assert second.challenger_measured_loss > second.champion_measured_loss
    assert second.p_better < 0.1
    assert registry.alias_version(T.ALIAS_CHAMPION) == "1"
    assert calls == []  # v1's measurement on split A was recorded at its registration
    tags = registry.version_info("2")["tags"]
    assert tags[T.TEST_FINGERPRINT] == fingerprint(SPLIT_A)
    assert float(tags[T.CHAMPION_MEASURED_LOSS]) == pytest.approx(first.challenger_measured_loss)

    # new data (another test split): the champion is measured again, on the new split, once
    third = _register(uri, models["long"], "sel-3", 2.5, SPLIT_B, locks)
    assert calls == ["1"]
    assert T.MEASURED_PREFIX + fingerprint(SPLIT_B) in registry.version_info("1")["tags"]
    assert third.promoted and third.p_better >= 0.9, third.reason
    assert registry.alias_version(T.ALIAS_CHAMPION) == "3"
    # the champion's recorded measurement on split B equals measuring it directly
    recorded = registry.measurement("1", fingerprint(SPLIT_B))
    direct = measure_folder(
        models["short"], SPLIT_B, SPEC, rank_on="bits_per_byte", fingerprint=fingerprint(SPLIT_B)
    )
    assert recorded.loss == pytest.approx(direct.loss, rel=1e-5)

    # re-running a registration is idempotent and cheap: no new version, nothing re-measured
    again = _register(uri, models["long"], "sel-3", 2.5, SPLIT_B, locks)
    assert not again.created and again.version == "3" and calls == ["1"]
    # the re-run's "already the champion" is kept apart: the reason shown is the promotion's
    tags = registry.version_info("3")["tags"]
    assert tags[T.GATE_REASON].startswith("promoted:") and "already" in tags[T.GATE_LAST_CHECK]

    # rollback: v1 is champion again, and re-running v3's selection does not undo it
    assert registry.rollback() == {"champion": "1", "rolled_back_from": "3"}
    after = _register(uri, models["long"], "sel-3", 2.5, SPLIT_B, locks)
    assert not after.promoted and "rolled back" in after.reason
    assert registry.alias_version(T.ALIAS_CHAMPION) == "1"
    assert len(Tracker(uri).client.search_model_versions(f"name = '{NAME}'")) == 3
    assert Path(models["long"]).is_dir()

    # the registry's history: every alias move with its reason, durable in the registry
    history = registry.history()
    assert [(e["before"], e["after"], e["decision"]) for e in history] == [
        (None, "1", "promoted"),
        ("1", "3", "promoted"),
        ("3", "1", "rolled back"),
    ]
    assert all(e["model"] == NAME and e["alias"] == "champion" and e["time"] for e in history)
    assert history[1]["selection_key"] == "sel-3" and "P(challenger better)" in history[1]["reason"]
    assert history[0]["flow_run"]  # the register flow's run
    description = Tracker(uri).client.get_registered_model(NAME).description
    assert "v3 -> v1 (rolled back" in description

    # a hand-made alias move is detected at the next gate and recorded too
    Tracker(uri).client.set_registered_model_alias(NAME, "champion", "2")
    _register(uri, models["long"], "sel-3", 2.5, SPLIT_B, locks)
    last = registry.history()[-1]
    assert (last["before"], last["after"], last["decision"]) == ("1", "2", "manual override")


def test_registry_history_through_the_cli(prefect_harness, models, tmp_path, capfd):
    from flows.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    locks = str(tmp_path / "locks")
    _register(uri, models["short"], "sel-1", 2.0, SPLIT_A, locks)
    _register(uri, models["long"], "sel-2", 2.0, SPLIT_A, locks)
    capfd.readouterr()
    assert main(["registry", "rollback", "--name", NAME, "--tracking-uri", uri,
                 "--reason", "canary alert"]) == 0  # fmt: skip
    assert main(["registry", "history", "--name", NAME, "--tracking-uri", uri]) == 0
    out = capfd.readouterr().out
    assert "3 moves of the champion alias" in out
    assert "v- -> v1  promoted" in out and "v1 -> v2  promoted" in out
    assert "v2 -> v1  rolled back: canary alert" in out
