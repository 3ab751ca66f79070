"""MLflow tracking and registry against a temporary SQLite store (tasks/tracking.py,
flows/register.py)."""

import os
import threading

import pytest

from tasks import tracking

pytestmark = pytest.mark.integration


@pytest.fixture
def uri(tmp_path):
    return tracking.default_tracking_uri(str(tmp_path / "lens"))


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
    assert tracking.is_secret(key, value) is secret


def test_default_tracking_uri_is_absolute_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = tracking.default_tracking_uri("rel")
    assert uri == f"sqlite:///{tmp_path.resolve() / 'rel' / 'mlflow.db'}"


def test_benchmark_run_metrics_steps_and_artifacts(uri, tmp_path):
    art = tmp_path / "out"
    (art / "plots").mkdir(parents=True)
    (art / "selection.csv").write_text("method,budget\nats,204800\n")
    (art / "plots" / "curve.txt").write_text("plot")
    run_id = tracking.log_benchmark_run(
        tracking_uri=uri,
        experiment="replay",
        run_name="flan",
        params={"dataset": "flan", "hf_token": "hf_" + "a" * 34},
        tags={"lensllm.git_commit": "abc"},
        metrics=[("ats/pearcorr", 0.909, 204800), ("ats/pearcorr", 0.731, 102400)],
        artifacts_dir=str(art),
    )
    client = tracking.get_client(uri)
    history = client.get_metric_history(run_id, "ats/pearcorr")
    assert sorted((m.step, m.value) for m in history) == [(102400, 0.731), (204800, 0.909)]
    summary = tracking.get_run_summary(uri, run_id)
    assert summary["status"] == "FINISHED"
    assert summary["params"] == {"dataset": "flan"}  # the token was filtered
    assert summary["tags"]["lensllm.git_commit"] == "abc"
    assert {f.path for f in client.list_artifacts(run_id)} == {"selection.csv", "plots"}
    assert [f.path for f in client.list_artifacts(run_id, "plots")] == ["plots/curve.txt"]
    # Artifacts live next to the database, not in ./mlruns of the working directory.
    assert summary["artifact_uri"].startswith((tmp_path / "lens" / "mlartifacts").as_uri())


def test_benchmark_run_rejects_missing_folder(uri, tmp_path):
    with pytest.raises(FileNotFoundError, match="artifacts_dir"):
        tracking.log_benchmark_run(
            tracking_uri=uri,
            experiment="e",
            run_name="r",
            params={},
            tags={},
            metrics=[],
            artifacts_dir=str(tmp_path / "missing"),
        )


def test_environment_tracking_uri_untouched(uri, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/elsewhere.db")
    run_id = tracking.start_run(uri, "env", "r")
    tracking.log_transformers_model(uri, run_id, tiny_model_dir, max_new_tokens=4)
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////nonexistent/elsewhere.db"
    assert tracking.get_run_summary(uri, run_id)["experiment_id"]


# ------------------------------------------------------------------------------------------
# Selection: parent run + nested candidate runs
# ------------------------------------------------------------------------------------------
def _probes(scale):
    return [
        {
            "subset_size": size,
            "subset_fingerprint": f"fp{size:06d}" + "0" * 56,
            "test_loss": scale * loss,
            "test_bits_per_byte": scale * loss / 2,
            "wall_time_s": 0.1 * (i + 1),
            "flops": 6.0 * 1e6 * size,
            "device": "cpu",
        }
        for i, (size, loss) in enumerate([(0, 3.0), (200, 2.5), (400, 2.2)])
    ]


def test_selection_parent_and_nested_candidate_runs(uri):
    parent_tags = {
        tracking.TAG_GIT_COMMIT: "abc123",
        tracking.TAG_CONFIG_HASH: "cfg",
        tracking.TAG_DATA_FINGERPRINT: "data",
        "s3_secret_key": "nope",
    }
    parent = tracking.start_selection_run(
        uri, "sel", "selection-1", parent_tags, {"selector": "ats"}, "selector: ats\n"
    )
    prediction = {"target_size": 3200, "predicted_loss": 1.9, "interval_low": 1.8}
    children = {}

    def log(name, scale):
        children[name] = tracking.log_candidate(
            uri, parent, name, _probes(scale), prediction, {"lora_r": 8}, probe_key=f"k-{name}"
        )

    # Concurrent candidates on the same subsets (same dataset inputs), as in a threaded flow.
    threads = [threading.Thread(target=log, args=(f"m{i}", 1 + i / 10)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(children) == ["m0", "m1", "m2"]  # no thread failed
    tracking.log_table(uri, parent, [{"model": "m0", "rank": 1}], "ranking.json")
    tracking.end_run(uri, parent)

    client = tracking.get_client(uri)
    assert "s3_secret_key" not in client.get_run(parent).data.tags
    assert client.download_artifacts(parent, "config/resolved.yaml")
    assert {f.path for f in client.list_artifacts(parent)} >= {"config", "ranking.json"}
    for name, run_id in children.items():
        summary = tracking.get_run_summary(uri, run_id)
        assert summary["parent_run_id"] == parent
        assert summary["tags"][tracking.TAG_GIT_COMMIT] == "abc123"
        assert summary["tags"][tracking.TAG_CANDIDATE] == name
        assert summary["tags"]["lensllm.device"] == "cpu"
        assert summary["params"] == {"lora_r": "8"}
        steps = [m.step for m in client.get_metric_history(run_id, "test_loss")]
        assert sorted(steps) == [0, 200, 400]
        for key in ("test_bits_per_byte", "wall_time_s", "flops"):
            assert len(client.get_metric_history(run_id, key)) == 3
        predicted = client.get_metric_history(run_id, "test_loss_predicted")
        assert [(m.step, m.value) for m in predicted] == [(3200, 1.9)]
        inputs = client.get_run(run_id).inputs.dataset_inputs
        profiles = sorted(d.dataset.profile for d in inputs)
        assert profiles == ['{"num_rows": 200}', '{"num_rows": 400}']  # size 0: no subset
        full = {t.key: t.value for d in inputs for t in d.tags if t.key == "lensllm.fingerprint"}
        assert full["lensllm.fingerprint"].startswith("fp")
        assert len(full["lensllm.fingerprint"]) == 64
        assert tracking.find_run(uri, "sel", {tracking.TAG_PROBE_KEY: f"k-{name}"}) == run_id
    assert tracking.find_run(uri, "sel", {tracking.TAG_PROBE_KEY: "k-none"}) is None
    assert tracking.find_run(uri, "no-such-experiment", {"a": "b"}) is None


def test_probe_without_subset_size_is_rejected(uri):
    run_id = tracking.start_run(uri, "e", "r")
    with pytest.raises(ValueError, match="subset_size"):
        tracking.log_probe(uri, run_id, {"test_loss": 1.0})


# ------------------------------------------------------------------------------------------
# Model logging and registry
# ------------------------------------------------------------------------------------------
def _register_plain(uri, model_dir, selection_key, loss, interval, margin=0.05):
    """The register steps through the plain functions (no Prefect), as the flow runs them."""
    from tasks.registry import version_description, version_tags

    tags = version_tags(
        task_key="wordnet",
        selection_key=selection_key,
        predicted_loss=loss,
        interval=interval,
        selector="ats",
        extra={tracking.TAG_GIT_COMMIT: "abc123", "hf_token": "hf_" + "x" * 34},
    )
    version = tracking.find_model_version(
        uri, "lens-tiny", {tracking.TAG_SELECTION_KEY: selection_key}
    )
    if version is None:
        run_id = tracking.start_run(uri, "register", "register", tags=tags)
        logged = tracking.log_transformers_model(uri, run_id, model_dir, max_new_tokens=4)
        version = tracking.register_model_version(
            uri,
            "lens-tiny",
            model_uri=logged["model_uri"],
            run_id=run_id,
            model_id=logged["model_id"],
            tags=tags,
            description=version_description(tags),
        )
    decision = tracking.promote_if_better(uri, "lens-tiny", version, margin=margin)
    return version, decision


def test_register_promote_reload_and_rollback(uri, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    version, decision = _register_plain(uri, tiny_model_dir, "sel-1", 2.0, [1.9, 2.1])
    assert decision["promote"]
    assert tracking.get_model_version_info(uri, "lens-tiny", version)["aliases"] == [
        "candidate",
        "champion",
    ]

    # The registered champion reloads to the same logits as the saved model.
    saved = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)("a word", return_tensors="pt").input_ids
    loaded = tracking.load_transformers_components(uri, "models:/lens-tiny@champion")
    with torch.no_grad():
        assert torch.allclose(saved(ids).logits, loaded["model"].eval()(ids).logits)

    info = tracking.get_model_version_info(uri, "lens-tiny", version)
    assert info["tags"]["lensllm.predicted_loss"] == "2.0"
    assert info["tags"]["lensllm.git_commit"] == "abc123"
    assert "hf_token" not in info["tags"]
    assert "ats" in info["description"]

    # Same selection again: found by tag, no new version.
    again, _ = _register_plain(uri, tiny_model_dir, "sel-1", 2.0, [1.9, 2.1])
    assert again == version
    assert len(tracking.get_client(uri).search_model_versions("name = 'lens-tiny'")) == 1

    # A worse challenger gets candidate, not champion.
    worse, decision = _register_plain(uri, tiny_model_dir, "sel-2", 2.5, [2.4, 2.6])
    assert worse == "2" and not decision["promote"]
    assert tracking.get_model_version_info(uri, "lens-tiny", worse)["aliases"] == ["candidate"]
    assert tracking.alias_version(uri, "lens-tiny", "champion") == "1"

    # A better one is promoted and records its predecessor; rollback restores it.
    better, decision = _register_plain(uri, tiny_model_dir, "sel-3", 1.5, [1.4, 1.6])
    assert decision["promote"] and tracking.alias_version(uri, "lens-tiny", "champion") == "3"
    assert tracking.rollback(uri, "lens-tiny") == {"champion": "1", "rolled_back_from": "3"}
    assert tracking.alias_version(uri, "lens-tiny", "champion") == "1"
    _, decision = _register_plain(uri, tiny_model_dir, "sel-3", 1.5, [1.4, 1.6])
    assert not decision["promote"] and "rolled back" in decision["reason"]
    with pytest.raises(ValueError, match="no previous champion"):
        tracking.rollback(uri, "lens-tiny")


def test_log_model_rejects_folder_without_safetensors(uri, tmp_path):
    run_id = tracking.start_run(uri, "e", "r")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        tracking.log_transformers_model(uri, run_id, str(tmp_path))


def test_rollback_without_champion(uri):
    with pytest.raises(ValueError, match="no champion"):
        tracking.rollback(uri, "missing-model")


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _flow_register(uri, model_dir, selection_key, loss, interval, parent_run_id=None):
    from flows.register import register_flow

    return register_flow(
        model_dir,
        registered_name="lens-flow",
        task_key="wordnet",
        selection_key=selection_key,
        predicted_loss=loss,
        interval=interval,
        selector="ats",
        tags={tracking.TAG_CONFIG_HASH: "cfg", "github_token": "ghp_" + "y" * 36},
        tracking_uri=uri,
        experiment="register",
        margin=0.05,
        parent_run_id=parent_run_id,
    )


@pytest.mark.slow
def test_register_flow_under_prefect(prefect_harness, uri, tiny_model_dir):
    parent = tracking.start_selection_run(uri, "sel", "selection", {}, {}, "a: 1\n")
    first = _flow_register(uri, tiny_model_dir, "sel-1", 2.0, [1.9, 2.1], parent)
    assert first["created"] and first["promoted"]
    assert first["aliases"] == ["candidate", "champion"]
    summary = tracking.get_run_summary(uri, first["run_id"])
    assert summary["parent_run_id"] == parent and summary["status"] == "FINISHED"
    assert "github_token" not in summary["tags"]

    again = _flow_register(uri, tiny_model_dir, "sel-1", 2.0, [1.9, 2.1])
    assert again["version"] == first["version"] and not again["created"]
    assert len(tracking.get_client(uri).search_model_versions("name = 'lens-flow'")) == 1

    worse = _flow_register(uri, tiny_model_dir, "sel-2", 2.5, [2.4, 2.6])
    assert worse["version"] == "2" and not worse["promoted"]
    assert worse["aliases"] == ["candidate"]
    assert "not better by the margin" in worse["reason"]
    assert tracking.alias_version(uri, "lens-flow", "champion") == first["version"]
