"""MLflow tracking and registry against a temporary SQLite store (tasks/tracking/,
flows/register.py)."""

import math
import os
import threading

import pytest
from pydantic import ValidationError

from tasks.promotion.policy import version_description, version_tags
from tasks.records.errors import LensLLMUserError, RegistryError
from tasks.records.schema import (
    GateInputs,
    Measurement,
    PreparedData,
    ProbeResult,
    ProbeSpec,
    RegistrationRequest,
)
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker, default_tracking_uri
from tasks.tracking.model_registry import ModelRegistry
from tasks.tracking.models import load_transformers_components, log_transformers_model
from tasks.tracking.runs import (
    finished_selection_run,
    log_benchmark_run,
    log_candidate,
    open_selection_run,
)
from tasks.tracking.secrets import is_secret

pytestmark = pytest.mark.integration


@pytest.fixture
def uri(tmp_path):
    return default_tracking_uri(str(tmp_path / "lens"))


@pytest.fixture
def tracker(uri):
    return Tracker(uri)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama causal LM with an offline byte-level BPE tokenizer, saved as safetensors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_lm")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(["a word and its definition", "the quick brown fox"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


# ------------------------------------------------------------------------------------------
# Secrets, URIs, benchmark runs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "secret"),
    [
        ("hf_token", "x", True),
        ("AWS_SECRET_ACCESS_KEY", "x", True),
        ("db_password", "x", True),
        ("aws_access_key_id", "x", True),
        ("max_new_tokens", 32, False),
        ("tokenizer", "byte-bpe", False),
        ("tokens_seen", 1000, False),
        ("endpoint", "http://user:hunter2@host:9000", True),
        ("note", "AKIAABCDEFGHIJKLMNOP", True),
        ("learning_rate", 1e-4, False),
    ],
)
def test_is_secret(key, value, secret):
    assert is_secret(key, value) is secret


def test_default_tracking_uri_is_absolute_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri("rel")
    assert uri == f"sqlite:///{tmp_path.resolve() / 'rel' / 'mlflow.db'}"
    assert Tracker.local("rel").uri == uri


def test_tracker_needs_a_uri():
    with pytest.raises(ValueError, match="non-empty string"):
        Tracker("")


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "/tmp/mlruns", "mlruns"])
def test_a_file_store_is_a_clear_error_before_any_work_unless_opted_in(uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(LensLLMUserError, match="MLflow file store.*sqlite:///"):
        Tracker(uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert Tracker(uri).uri == uri


def test_tracker_resolve_precedence_config_then_environment_then_local(tmp_path, monkeypatch):
    configured = f"sqlite:///{tmp_path / 'configured.db'}"
    from_env = f"sqlite:///{tmp_path / 'environment.db'}"
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", from_env)
    assert Tracker.resolve(configured, cache).uri == configured  # config over the environment
    assert Tracker.resolve(None, cache).uri == from_env  # the environment over the local store
    assert not cache.exists()  # the local store is not created when it is not used
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert Tracker.resolve(configured, cache).uri == configured
    local = Tracker.resolve(None, cache)
    assert local.uri == default_tracking_uri(cache)
    assert local.uri == f"sqlite:///{cache.resolve() / 'mlflow.db'}" and cache.is_dir()


def test_benchmark_run_metrics_steps_and_artifacts(tracker, tmp_path):
    art = tmp_path / "out"
    (art / "plots").mkdir(parents=True)
    (art / "selection.csv").write_text("method,budget\nats,204800\n")
    (art / "plots" / "curve.txt").write_text("plot")
    run_id = log_benchmark_run(
        tracker,
        experiment="replay",
        run_name="flan",
        params={"dataset": "flan", "hf_token": "hf_" + "a" * 34},
        tags={T.GIT_COMMIT: "abc"},
        metrics=[("ats/pearcorr", 0.909, 204800), ("ats/pearcorr", 0.731, 102400)],
        artifacts_dir=str(art),
    )
    client = tracker.client
    history = client.get_metric_history(run_id, "ats/pearcorr")
    assert sorted((m.step, m.value) for m in history) == [(102400, 0.731), (204800, 0.909)]
    summary = tracker.run_summary(run_id)
    assert summary["status"] == "FINISHED"
    assert summary["params"] == {"dataset": "flan"}  # the token was filtered
    assert summary["tags"][T.GIT_COMMIT] == "abc"
    assert summary["tags"][T.RUN_KIND] == "benchmark"
    assert {f.path for f in client.list_artifacts(run_id)} == {"selection.csv", "plots"}
    assert [f.path for f in client.list_artifacts(run_id, "plots")] == ["plots/curve.txt"]
    # Artifacts live next to the database, not in ./mlruns of the working directory.
    assert summary["artifact_uri"].startswith((tmp_path / "lens" / "mlartifacts").as_uri())


def test_benchmark_run_rejects_missing_folder(tracker, tmp_path):
    with pytest.raises(FileNotFoundError, match="artifacts_dir"):
        log_benchmark_run(
            tracker,
            experiment="e",
            run_name="r",
            params={},
            tags={},
            metrics=[],
            artifacts_dir=str(tmp_path / "missing"),
        )


def test_environment_tracking_uri_untouched(tracker, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/elsewhere.db")
    run_id = tracker.create_run("env", "r")
    log_transformers_model(tracker, run_id, tiny_model_dir, max_new_tokens=4)
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////nonexistent/elsewhere.db"
    assert tracker.run_summary(run_id)["experiment_id"]


# ------------------------------------------------------------------------------------------
# Selection: parent run + nested candidate runs
# ------------------------------------------------------------------------------------------
TEST_FINGERPRINT = "test" + "1" * 60


def _data() -> PreparedData:
    """What ``log_probe`` reads of the prepared data: its name and source (no examples)."""
    return PreparedData(
        source="wordnet",
        train=[],
        val=[],
        test=[],
        sizes=[200, 400],
        fingerprint="f" * 16,
        subset_fingerprints={200: "fp000200" + "0" * 56, 400: "fp000400" + "0" * 56},
        val_fingerprint="v" * 64,
        test_fingerprint=TEST_FINGERPRINT,
        n_available=1000,
        n_train_available=800,
    )


def _probe(candidate, size, loss, wall_time_s=0.1) -> ProbeResult:
    return ProbeResult(
        candidate=candidate,
        size=size,
        # a size-0 (zero-shot) probe has no training subset to log, even with a fingerprint
        train_fingerprint=f"fp{size:06d}" + "0" * 56,
        test_fingerprint=TEST_FINGERPRINT,
        test_loss=loss,
        test_loss_per_byte=loss / 4,
        test_bits_per_byte=loss / 2,
        test_tokens=100,
        test_bytes=400,
        forward_params=1_000_000,
        flops=6.0 * 1e6 * size,
        method="lora",
        learning_rate=2e-3,
        n_train=size,
        n_val=16,
        n_test=16,
        device="cpu",
        dtype="float32",
        wall_time_s=wall_time_s,
    )


def _probes(candidate, scale):
    return [
        _probe(candidate, size, scale * loss, 0.1 * (i + 1))
        for i, (size, loss) in enumerate([(0, 3.0), (200, 2.5), (400, 2.2)])
    ]


def test_selection_parent_and_nested_candidate_runs(tracker):
    parent_tags = {
        T.GIT_COMMIT: "abc123",
        T.CONFIG_HASH: "cfg",
        T.DATA_FINGERPRINT: "data",
        T.SELECTION_KEY: "sel-key",
        "s3_secret_key": "nope",
    }
    parent, resumed = open_selection_run(
        tracker, "sel", "selection-1", parent_tags, {"selector": "ats"}, "selector: ats\n"
    )
    assert not resumed
    prediction = {"target_size": 3200, "predicted_loss": 1.9, "interval_low": 1.8}
    data = _data()
    children = {}

    def log(name, scale):
        children[name] = log_candidate(
            tracker,
            parent,
            name,
            _probes(name, scale),
            data,
            prediction=prediction,
            params={"lora_r": 8},
        )

    # Concurrent candidates on the same subsets (same dataset inputs), as in a threaded flow.
    threads = [threading.Thread(target=log, args=(f"m{i}", 1 + i / 10)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(children) == ["m0", "m1", "m2"]  # no thread failed
    tracker.log_table(parent, [{"model": "m0", "rank": 1}], "ranking.json")
    tracker.end_run(parent)

    client = tracker.client
    parent_run = client.get_run(parent)
    assert "s3_secret_key" not in parent_run.data.tags
    assert parent_run.data.tags[T.RUN_KIND] == "selection"
    assert client.download_artifacts(parent, "config/resolved.yaml")
    assert {f.path for f in client.list_artifacts(parent)} >= {"config", "ranking.json"}
    assert finished_selection_run(tracker, "sel", "sel-key") == parent
    for name, run_id in children.items():
        summary = tracker.run_summary(run_id)
        assert summary["parent_run_id"] == parent
        assert summary["status"] == "FINISHED"
        assert summary["tags"][T.GIT_COMMIT] == "abc123"
        assert summary["tags"][T.SELECTION_KEY] == "sel-key"
        assert summary["tags"][T.CANDIDATE] == name
        assert summary["tags"][T.RUN_KIND] == "candidate"
        assert summary["tags"][T.DEVICE] == "cpu"
        assert "s3_secret_key" not in summary["tags"]
        assert summary["params"] == {"lora_r": "8"}
        steps = [m.step for m in client.get_metric_history(run_id, "test_loss")]
        assert sorted(steps) == [0, 200, 400]
        for key in ("test_bits_per_byte", "wall_time_s", "flops"):
            assert len(client.get_metric_history(run_id, key)) == 3
        predicted = client.get_metric_history(run_id, "test_loss_predicted")
        assert [(m.step, m.value) for m in predicted] == [(3200, 1.9)]
        inputs = client.get_run(run_id).inputs.dataset_inputs

        def context(d):
            return {t.key: t.value for t in d.tags}[T.INPUT_CONTEXT]

        training = [d for d in inputs if context(d) == "training"]
        profiles = sorted(d.dataset.profile for d in training)
        assert profiles == ['{"num_rows": 200}', '{"num_rows": 400}']  # size 0: no subset
        assert sorted(d.dataset.name for d in training) == ["wordnet-200", "wordnet-400"]
        full = {t.value for d in training for t in d.tags if t.key == T.INPUT_FINGERPRINT}
        assert full == {"fp000200" + "0" * 56, "fp000400" + "0" * 56}  # the full 64 characters
        testing = [d for d in inputs if context(d) == "testing"]
        assert testing and {d.dataset.name for d in testing} == {"wordnet-test"}
        assert {t.value for d in testing for t in d.tags if t.key == T.INPUT_FINGERPRINT} == {
            TEST_FINGERPRINT
        }
        assert tracker.find_run("sel", {T.CANDIDATE: name}) == run_id
        finished = tracker.find_run("sel", {T.CANDIDATE: name, T.RUN_KIND: "candidate"}, "FINISHED")
        assert finished == run_id
    assert tracker.find_run("sel", {T.CANDIDATE: "none"}) is None
    assert tracker.find_run("no-such-experiment", {"a": "b"}) is None

    # Logging the same candidate again under the parent (a resumed selection) keeps its run.
    again = log_candidate(
        tracker, parent, "m0", _probes("m0", 1.0), data, prediction=prediction, params={}
    )
    assert again == children["m0"]


def test_a_probe_without_its_size_cannot_be_logged(tracker):
    fields = _probe("m", 200, 1.0).model_dump()
    del fields["size"]
    with pytest.raises(ValidationError, match=r"size\s+Field required"):
        ProbeResult(**fields)
    # and every metric needs an int step (the subset size)
    run_id = tracker.create_run("e", "r")
    with pytest.raises(ValueError, match="step must be an int"):
        tracker.log(run_id, metrics=[("test_loss", 1.0, None)])


# ------------------------------------------------------------------------------------------
# Model logging and registry
# ------------------------------------------------------------------------------------------
def _register_plain(tracker, model_dir, selection_key, loss, interval, margin=0.05):
    """The register steps through the plain functions (no Prefect), as the flow runs them."""
    tags = version_tags(
        task_key="wordnet",
        selection_key=selection_key,
        predicted_loss=loss,
        interval=interval,
        selector="ats",
        extra={T.GIT_COMMIT: "abc123", "hf_token": "hf_" + "x" * 34},
    )
    registry = ModelRegistry(tracker, "lens-tiny")
    version = registry.find_version({T.SELECTION_KEY: selection_key})
    if version is None:
        run_id = tracker.create_run("register", "register", tags)
        logged = log_transformers_model(tracker, run_id, model_dir, max_new_tokens=4)
        version = registry.register_version(
            model_uri=logged["model_uri"],
            run_id=run_id,
            model_id=logged["model_id"],
            tags=tags,
            description=version_description(tags),
        )
    decision = registry.promote_if_better(version, measurement=_measured(loss), margin=margin)
    return version, decision


def _measured(loss: float, fp: str = "split-1") -> Measurement:
    """A measurement with loss ``loss`` bits per byte on 8 examples of 10 bytes each."""
    per_example = loss * math.log(2) * 10
    return Measurement(
        rank_on="bits_per_byte",
        test_fingerprint=fp,
        example_nll=[per_example] * 8,
        example_units=[10] * 8,
        scale=1 / math.log(2),
    )


def test_register_promote_reload_and_rollback(tracker, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = ModelRegistry(tracker, "lens-tiny")
    version, decision = _register_plain(tracker, tiny_model_dir, "sel-1", 2.0, [1.9, 2.1])
    assert decision.promote
    assert registry.version_info(version)["aliases"] == [T.ALIAS_CANDIDATE, T.ALIAS_CHAMPION]

    # The registered champion reloads to the same logits as the saved model.
    saved = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)("a word", return_tensors="pt").input_ids
    loaded = load_transformers_components(tracker, "models:/lens-tiny@champion")
    with torch.no_grad():
        assert torch.allclose(saved(ids).logits, loaded["model"].eval()(ids).logits)

    info = registry.version_info(version)
    assert info["tags"][T.PREDICTED_LOSS] == "2.0"
    assert info["tags"][T.TASK] == "wordnet"  # the gate compares champions per task
    assert info["tags"][T.GIT_COMMIT] == "abc123"
    assert "no champion" in info["tags"][T.GATE_REASON]
    assert "hf_token" not in info["tags"]
    assert "ats" in info["description"]

    # Same selection again: found by tag, no new version.
    again, _ = _register_plain(tracker, tiny_model_dir, "sel-1", 2.0, [1.9, 2.1])
    assert again == version
    assert len(tracker.client.search_model_versions("name = 'lens-tiny'")) == 1

    # A worse challenger gets candidate, not champion.
    worse, decision = _register_plain(tracker, tiny_model_dir, "sel-2", 2.5, [2.4, 2.6])
    assert worse == "2" and not decision.promote
    assert registry.version_info(worse)["aliases"] == [T.ALIAS_CANDIDATE]
    assert registry.alias_version(T.ALIAS_CHAMPION) == "1"

    # A better one is promoted and records its predecessor; rollback restores it.
    better, decision = _register_plain(tracker, tiny_model_dir, "sel-3", 1.5, [1.4, 1.6])
    assert decision.promote and registry.alias_version(T.ALIAS_CHAMPION) == "3"
    assert registry.version_info(better)["tags"][T.PREVIOUS_CHAMPION] == "1"
    assert registry.rollback() == {"champion": "1", "rolled_back_from": "3"}
    assert registry.alias_version(T.ALIAS_CHAMPION) == "1"
    assert registry.version_info(better)["tags"][T.ROLLED_BACK] == "true"
    _, decision = _register_plain(tracker, tiny_model_dir, "sel-3", 1.5, [1.4, 1.6])
    assert not decision.promote and "rolled back" in decision.reason
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback()


def test_log_model_rejects_folder_without_safetensors(tracker, tmp_path):
    run_id = tracker.create_run("e", "r")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        log_transformers_model(tracker, run_id, str(tmp_path))


def test_rollback_without_champion_is_a_registry_error(tracker):
    with pytest.raises(RegistryError, match="no champion") as info:
        ModelRegistry(tracker, "missing-model").rollback()
    # a user error: the CLI prints one line and exits 2 (no traceback)
    assert isinstance(info.value, LensLLMUserError) and info.value.exit_code == 2

    # a registered model with a version but no champion yet (only the candidate alias)
    registry = ModelRegistry(tracker, "no-champion")
    run_id = tracker.create_run("register", "register")
    artifacts = tracker.client.get_run(run_id).info.artifact_uri
    version = registry.register_version(
        model_uri=f"{artifacts}/model",
        run_id=run_id,
        model_id=None,
        tags={T.TASK: "wordnet"},
        description="no model logged",
    )
    assert registry.alias_version(T.ALIAS_CANDIDATE) == version
    assert registry.alias_version(T.ALIAS_CHAMPION) is None
    with pytest.raises(RegistryError, match="'no-champion' has no champion"):
        registry.rollback()


def test_cli_rollback_without_champion_exits_2(uri, capsys):
    from flows.cli import main

    assert main(["registry", "rollback", "--name", "missing-model", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # MLflow may log the creation of the SQLite store above it; the CLI's message is the last line
    last = err.strip().splitlines()[-1]
    assert last == "lensllm: error: registered model 'missing-model' has no champion to roll back"


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _flow_register(uri, model_dir, selection_key, loss, interval, parent_run_id=None, data=None):
    from flows.register import register_flow

    test = [{"prompt": "Q: say cat", "target": " cat"}] * 8
    gate = GateInputs(
        test=test,
        test_fingerprint="split-1",
        spec=ProbeSpec(device="cpu"),
        rank_on="bits_per_byte",
        measurement=_measured(loss),
        margin=0.05,
    )
    request = RegistrationRequest(
        model_dir=model_dir,
        registered_name="lens-flow",
        task_key="wordnet",
        selection_key=selection_key,
        predicted_loss=loss,
        interval=interval,
        selector="ats",
        data_fingerprint=data,
        tags={T.CONFIG_HASH: "cfg", "github_token": "ghp_" + "y" * 36},
        tracking_uri=uri,
        experiment="register",
        parent_run_id=parent_run_id,
    )
    return register_flow(request, gate)


@pytest.mark.slow
def test_register_flow_under_prefect(prefect_harness, uri, tracker, tiny_model_dir):
    parent, _ = open_selection_run(tracker, "sel", "selection", {}, {}, "a: 1\n")
    first = _flow_register(uri, tiny_model_dir, "sel-1", 2.0, [1.9, 2.1], parent)
    assert first.created and first.promoted
    assert first.aliases == [T.ALIAS_CANDIDATE, T.ALIAS_CHAMPION]
    # with a selection run, the model is logged in it: the version links to the selection
    assert first.run_id == parent
    version = ModelRegistry(tracker, "lens-flow").version_info(first.version)
    assert version["run_id"] == parent
    assert version["tags"][T.CONFIG_HASH] == "cfg" and "github_token" not in version["tags"]
    # alone, the register flow makes a run of its own
    alone = _flow_register(uri, tiny_model_dir, "sel-0", 2.2, [2.1, 2.3])
    summary = tracker.run_summary(alone.run_id)
    assert summary["tags"][T.RUN_KIND] == "register" and summary["status"] == "FINISHED"
    assert "github_token" not in summary["tags"]

    again = _flow_register(uri, tiny_model_dir, "sel-1", 2.0, [1.9, 2.1])
    assert again.version == first.version and not again.created
    assert len(tracker.client.search_model_versions("name = 'lens-flow'")) == 2

    worse = _flow_register(uri, tiny_model_dir, "sel-2", 2.5, [2.4, 2.6])
    assert worse.version == "3" and not worse.promoted
    assert worse.aliases == [T.ALIAS_CANDIDATE]
    assert "not better by the margin" in worse.reason
    registry = ModelRegistry(tracker, "lens-flow")
    assert registry.alias_version(T.ALIAS_CHAMPION) == first.version


@pytest.mark.slow
def test_same_weights_and_data_add_no_version(
    prefect_harness, uri, tracker, tiny_model_dir, tmp_path
):
    """A second selection that trained the same model on the same data (it changed only a
    setting such as ``validate.top_k``) is linked to the version that holds it: no version is
    added, and the gate does not compare the model with itself."""
    import shutil

    def selection_run(key: str) -> str:
        tags = {T.SELECTION_KEY: key, T.RUN_KIND: "selection"}
        return open_selection_run(tracker, "sel", key, tags, {}, "a: 1\n")[0]

    run_a, run_b = selection_run("sel-a"), selection_run("sel-b")
    first = _flow_register(uri, tiny_model_dir, "sel-a", 2.0, [1.9, 2.1], run_a, data="d1")
    registry = ModelRegistry(tracker, "lens-flow")
    tags_before = registry.version_info(first.version)["tags"]
    again = _flow_register(uri, tiny_model_dir, "sel-b", 2.0, [1.9, 2.1], run_b, data="d1")
    assert again.already_registered and not again.created and again.version == first.version
    assert again.reason.startswith(f"already registered as version {first.version} (")
    assert again.verdict == "not run" and not again.promoted and again.p_better is None
    assert again.weights_sha256 == first.weights_sha256
    assert registry.version_info(first.version)["tags"] == tags_before  # no gate ran on it
    linked = tracker.run_summary(run_b)["tags"]
    assert (linked[T.REGISTERED_MODEL], linked[T.REGISTERED_VERSION]) == ("lens-flow", "1")
    assert len(tracker.client.search_model_versions("name = 'lens-flow'")) == 1

    # the same weights trained on other data, or other weights: a version of their own
    other_data = _flow_register(uri, tiny_model_dir, "sel-c", 2.0, [1.9, 2.1], data="d2")
    copy = shutil.copytree(tiny_model_dir, tmp_path / "changed")
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    other_weights = _flow_register(uri, str(copy), "sel-d", 2.0, [1.9, 2.1], data="d1")
    assert (other_data.version, other_weights.version) == ("2", "3")
    assert other_data.created and other_weights.created
