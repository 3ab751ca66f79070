"""NTK features of each candidate on a probe set (the F term of LensLLM), as a cached task."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import torch
from prefect import task

from lens_model.ntk import NonFiniteKernelError, f_term_from_spectrum, ntk_features
from tasks.records.schema import Example, NtkResult, NtkSpec, ProbeSpec
from tasks.runtime.cache import cached
from tasks.runtime.compute_threads import run_on_compute_thread
from tasks.training.finetune import (
    collate,
    configure_cpu,
    encode_examples,
    is_out_of_memory,
    pad_id,
    prepare_model,
    progress_logger,
)
from tasks.training.precision import select_device


def compute_ntk_features(
    model_dir: str,
    examples: list[Example],
    spec: ProbeSpec,
    *,
    projection_dim: int | None = None,
    threads: int | None = None,
    trust_remote_code: bool = False,
    candidate: str | None = None,
) -> NtkResult:
    """Kernel spectrum of ``model_dir`` (with the probe's LoRA adapter) on ``examples``.

    The kernel is taken over the parameters the probe trains (the freshly initialised LoRA
    weights, seeded like the probe), so it describes the linearised dynamics of that probe.
    ``spec.method == "full"`` needs ``projection_dim`` to keep memory bounded. ``F(eta, t)``
    comes from the result (:meth:`NtkResult.f_term`) once the probe's steps are known.
    ``candidate`` names the task run (``ntk smollm2-135m``); it changes nothing computed.
    """
    return run_on_compute_thread(
        _ntk_features,
        model_dir,
        examples,
        spec,
        projection_dim=projection_dim,
        threads=threads,
        trust_remote_code=trust_remote_code,
    )


def _ntk_features(
    model_dir: str,
    examples: list[Example],
    spec: ProbeSpec,
    *,
    projection_dim: int | None,
    threads: int | None,
    trust_remote_code: bool,
) -> NtkResult:
    """:func:`compute_ntk_features`' work, on a compute thread."""
    if not examples:
        raise ValueError("the NTK probe set is empty: give at least 2 examples")
    start = time.perf_counter()
    dev = select_device(spec.device)
    if dev.type == "cpu":
        configure_cpu(threads)
    # Dropout off: the kernel is that of the deterministic network; fp32 (ProbeSpec.adapter_only)
    kernel_spec = spec.model_copy(update={"lora_dropout": 0.0, "precision": "fp32"})
    model, tokenizer, _ = prepare_model(
        model_dir, kernel_spec, device=dev, trust_remote_code=trust_remote_code
    )
    # vmap has no batching rule for SDPA attention and falls back to a per-example loop;
    # eager attention batches (measured 4.8x faster on smollm2-135m-l8, same kernel to 1e-7).
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    batch = collate(encode_examples(tokenizer, examples, spec.max_seq_len), pad_id(tokenizer))
    batch = {k: v.to(dev) for k, v in batch.items()}
    feats = ntk_features(
        model, batch, eta=1.0, t=0.0, projection_dim=projection_dim, seed=spec.seed
    )
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return NtkResult(
        n=feats["n"],
        eigenvalues=feats["eigenvalues"].tolist(),
        alignment=feats["alignment"].tolist(),
        residual_norm_sq=feats["residual_norm_sq"],
        effective_rank=feats["effective_rank"],
        participation_ratio=feats["participation_ratio"],
        trace=feats["trace"],
        seconds=time.perf_counter() - start,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        device=str(dev),
        projection_dim=projection_dim,
    )


def _ntk_run_name(parameters: dict[str, Any]) -> str:
    return f"ntk {parameters.get('candidate') or Path(parameters['model_dir']).name}"


ntk_task = task(name="ntk-features", task_run_name=_ntk_run_name)(compute_ntk_features)


def f_term(feats: NtkResult, eta: float, t: float) -> float:
    """LensLLM's ``F(eta, t) = sum_k exp(-2 eta lambda_k t) (u_k . r0)^2`` of a candidate."""
    return f_term_from_spectrum(feats.eigenvalues, feats.alignment, feats.residual_norm_sq, eta, t)


def candidate_ntk(
    models: dict[str, str],
    trust: dict[str, bool],
    train: list[Example],
    spec: ProbeSpec,
    ntk: NtkSpec,
    *,
    threads: int,
    storage: Path,
) -> dict[str, NtkResult]:
    """The NTK features of every candidate on the first ``ntk.n_examples`` training examples
    (cached). A candidate whose kernel is not finite or runs out of memory loses only its F
    (a warning names it): the laws without F still rank every candidate."""
    if not ntk.enabled:
        return {}
    logger = progress_logger()
    run = cached(ntk_task, storage, exclude=("threads", "candidate"))
    out = {}
    for name, path in models.items():
        try:
            feats = run(
                path,
                train[: ntk.n_examples],
                spec.adapter_only(),
                projection_dim=ntk.projection_dim,
                threads=threads,
                trust_remote_code=trust[name],
                candidate=name,
            )
        except Exception as err:
            if not (isinstance(err, NonFiniteKernelError) or is_out_of_memory(err)):
                raise
            hint = ": lower ntk.n_examples or probe.max_seq_len, or set ntk.projection_dim"
            logger.warning(
                "NTK features of %s skipped (%s); the selection goes on without the F term%s",
                name,
                err,
                hint if is_out_of_memory(err) else "",
            )
            continue
        logger.info(
            "NTK %-28s n=%d effective rank %.2f, ||r0||^2 %.3g, %.1f s",
            name,
            feats.n,
            feats.effective_rank,
            feats.residual_norm_sq,
            feats.seconds,
        )
        out[name] = feats
    return out
