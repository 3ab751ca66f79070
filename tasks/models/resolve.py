"""Turn a candidate name into a local model folder (safetensors + tokenizer).

Names that resolve: a built-in (:mod:`tasks.models.builtin`), a local folder written by
``save_pretrained``, or a hub id ``org/name`` (needs hub access). Every folder is checked to
hold a causal language model with safetensors weights before anything loads it; a folder's own
code runs only when the candidate opts in with ``trust_remote_code``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tasks.models.builtin import builtin_names, resolve_builtin, suggestions
from tasks.models.store import cache_root
from tasks.records.errors import CandidateError, HubUnavailableError, MissingFileError


def unknown_name_error(name: str) -> CandidateError:
    close = suggestions(name)
    hint = f" Did you mean {' or '.join(repr(s) for s in close)}?" if close else ""
    return CandidateError(
        f"Unknown candidate {name!r}.{hint} Use a built-in ({', '.join(builtin_names())}; "
        "`lensllm models list` shows them all), an existing local model folder, or a hub id "
        "'org/name'."
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
            f"built-in: {', '.join(builtin_names())}."
        ) from exc
    except (LocalEntryNotFoundError, OSError) as exc:
        raise HubUnavailableError(
            f"Cannot fetch {repo_id!r}: the model hub is offline or unreachable from here "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}) and it is not in the "
            f"local hub cache. Use a built-in candidate instead: "
            f"{', '.join(builtin_names())}, or a local model folder."
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
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if trust_remote_code or "trust_remote_code" not in str(err):
            raise
        raise CandidateError(
            f"{folder} holds its own model code, which LensLLM does not run unless you opt in: "
            "set trust_remote_code: true on that candidate in the config (only for code you "
            "trust)"
        ) from err
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
        A built-in (see :func:`tasks.models.builtin.builtin_names`), a local folder, or a hub id.
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
    MissingFileError
        A local folder that does not exist, or a built-in's wheel is not installed.
    HubUnavailableError
        A hub id while the hub cannot be reached.
    """
    if not isinstance(name, str) or not name.strip():
        raise CandidateError(f"A candidate name must be a non-empty string, got {name!r}.")
    name = name.strip()
    builtin = resolve_builtin(name, cache_root(cache_dir))
    if builtin is not None:
        return str(builtin.resolve())
    path = Path(name).expanduser()
    if path.is_dir():
        check_causal_lm(path, trust_remote_code=trust_remote_code)
        return str(path.resolve())
    if _looks_like_path(name):
        raise MissingFileError(
            f"Model folder {name!r} does not exist. Give the path of a folder written by "
            f"save_pretrained, or a built-in: {', '.join(builtin_names())}."
        )
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        folder = _download_from_hub(name, trust_remote_code)
        check_causal_lm(folder, trust_remote_code=trust_remote_code)
        return str(folder.resolve())
    raise unknown_name_error(name)


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

    from tasks.runtime.construction import model_construction

    folder = Path(path)
    check_causal_lm(folder, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with model_construction(), torch.device("meta"):
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
