"""Weight-spectrum (NLPmetrics) metrics of each candidate, as a cached task.

The metrics (``lens_model.weight_spectrum``) are computed from the candidate's safetensors
files, over the **2-D weights of its decoder layers**: the attention projections (q, k, v, o)
and the MLP projections (gate, up, down) of every ``layers.<i>`` block. The token embedding
and the LM head are left out: they are vocabulary-sized (most of the cost, and tied in many
small models) and their shape depends on the tokenizer, not on how well the network trained.

The cache key is the sha256 of the weight files (names and bytes) plus the code, not the
folder's path: the task runs again when the weights change and is a cache hit for the same
weights anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from prefect import task

from lens_model.weight_spectrum import layer_spectra, summarize
from tasks.records.errors import CandidateError
from tasks.records.schema import SpectralLayer, SpectralResult, SpectralSpec
from tasks.runtime.cache import cached
from tasks.runtime.compute_threads import run_on_compute_thread
from tasks.training.finetune import progress_logger

MATRICES = "2-D weights of the decoder layers (attention q/k/v/o, MLP gate/up/down)"
#: a weight of decoder block ``i`` (Llama/Gemma/Mistral ``layers.i``, GPT-2 ``h.i``, ``blocks.i``)
_DECODER_WEIGHT = re.compile(r"(^|\.)(layers|h|blocks)\.(\d+)\..*\.weight$")


def weight_files(model_dir: str) -> list[Path]:
    """The safetensors files of a model folder (sorted), or a clear error."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise CandidateError(
            f"{model_dir} holds no *.safetensors file: the weight-spectrum metrics read the "
            "weights from there (re-save the model with save_pretrained, or set "
            "spectral.enabled: false)"
        )
    return files


def weights_digest(model_dir: str) -> str:
    """sha256 over the names and bytes of the folder's safetensors files."""
    digest = hashlib.sha256()
    for file in weight_files(model_dir):
        with open(file, "rb") as handle:
            part = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(file.name.encode() + b"\0" + part.encode())
    return digest.hexdigest()


def decoder_blocks(model_dir: str) -> Iterator[dict]:
    """The decoder's 2-D weights, one block at a time (float32 numpy, so only one block is in
    memory), in block order."""
    from safetensors import safe_open

    blocks: dict[int, list[tuple[Path, str]]] = {}
    for file in weight_files(model_dir):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                found = _DECODER_WEIGHT.search(key)
                if found and len(handle.get_slice(key).get_shape()) == 2:
                    blocks.setdefault(int(found.group(3)), []).append((file, key))
    if not blocks:
        raise CandidateError(
            f"{model_dir} has no decoder-layer weight matrices (names like "
            "'model.layers.0.self_attn.q_proj.weight'): set spectral.enabled: false"
        )
    for index in sorted(blocks):
        matrices = {}
        for file, key in sorted(blocks[index], key=lambda item: item[1]):
            with safe_open(str(file), framework="pt") as handle:
                matrices[key] = handle.get_tensor(key).float().numpy()
        yield matrices


def compute_weight_metrics(
    candidate: str, model_dir: str, weights: str, *, min_tail: int
) -> SpectralResult:
    """The weight-spectrum metrics of ``model_dir`` (``weights``: its :func:`weights_digest`,
    the cache key; ``candidate`` names the task run and the log lines). On a compute thread
    (the weights are read with torch: tasks.runtime.compute_threads)."""
    return run_on_compute_thread(
        _weight_metrics, candidate, model_dir, weights, min_tail=min_tail, threads=None
    )


def _weight_metrics(
    candidate: str, model_dir: str, weights: str, *, min_tail: int, threads: None
) -> SpectralResult:
    logger = progress_logger()
    start = time.perf_counter()
    layers = []
    for i, block in enumerate(decoder_blocks(model_dir)):
        layers += [SpectralLayer(**x.as_dict()) for x in layer_spectra(block, min_tail=min_tail)]
        logger.debug("spectral %s: block %d, %d matrices", candidate, i, len(layers))
    means = summarize(layers)
    return SpectralResult(
        weights_sha256=weights,
        matrices=MATRICES,
        layers=layers,
        seconds=time.perf_counter() - start,
        **means,
    )


spectral_task = task(name="weight-spectrum", task_run_name="spectral {candidate}")(
    compute_weight_metrics
)


def cached_spectral_task(storage: Path):
    """:data:`spectral_task` with its persisted result, keyed on the weights' digest,
    ``min_tail`` and the code (not on the candidate's name or folder)."""
    return cached(spectral_task, storage, exclude=("candidate", "model_dir"))


def candidate_spectra(
    models: dict[str, str], spec: SpectralSpec, *, storage: Path
) -> dict[str, SpectralResult]:
    """The weight-spectrum metrics of every candidate (cached on its weights and the code)."""
    if not spec.enabled:
        return {}
    logger = progress_logger()
    run = cached_spectral_task(storage)
    out = {}
    for name, path in models.items():
        start = time.perf_counter()
        digest = weights_digest(path)
        result = run(name, os.fspath(path), digest, min_tail=spec.min_tail)
        logger.info(
            "spectral %-23s %d matrices, weighted alpha %.3f, alpha %.3f, log10 lambda_max "
            "%.3f; computed in %.1f s, %.1f s here",
            name,
            len(result.layers),
            result.alpha_weighted,
            result.alpha,
            result.log_spectral_norm,
            result.seconds,
            time.perf_counter() - start,
        )
        out[name] = result
    return out
