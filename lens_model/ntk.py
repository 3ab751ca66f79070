"""Empirical neural tangent kernel (NTK) features of a causal LM on a probe set: the F term.

LensLLM (Zeng et al., ICML 2025) replaces the rectified law's pre-learned data size D_l by
``F(Theta, t) = || exp(-eta Theta t) (f0(X) - Y) ||^2``: the residual that linearised
gradient-flow training leaves after time ``t``. This module computes every piece of it from a
model and a batch of tensors (no file I/O, no tracking); it is the only torch code of
``lens_model``.

Conventions (documented choices, used everywhere below)
-------------------------------------------------------
* A batch is what ``tasks.training.finetune.collate`` returns: right-padded ``input_ids``,
  ``attention_mask`` and ``labels`` (``-100`` on prompt and padding positions).
* **Per-example output** ``f_i``: the mean log-likelihood of example ``i``'s target tokens,
  ``f_i = (1 / T_i) sum_{t target} log p(y_t | y_<t)`` (next-token prediction, labels shifted
  by one as in ``tasks.probing.probe.batch_nll``), i.e. minus its mean target NLL.
* **Targets and residual**: ``f_i <= 0`` and its optimum is ``f*_i = 0`` (the model puts all
  mass on the target tokens), so ``r0_i = f0_i - f*_i = f0_i``: the residual is the vector of
  negative mean target NLLs of the pretrained (or LoRA-initialised) model.
* **Kernel**: ``Theta_ij = <grad_w f_i, grad_w f_j>`` over the trainable parameters ``w``
  (the LoRA weights of a PEFT model), accumulated in float64.
* ``F(eta, t) = sum_k exp(-2 eta lambda_k t) (u_k . r0)^2`` from the eigendecomposition
  ``Theta = U diag(lambda) U^T``; ``t`` is the probe's training time in steps and ``eta`` its
  learning rate.

Right padding is required: the forward pass runs per example under ``torch.func.vmap``, where
transformers' padding-mask logic cannot run, so it is given no attention mask; with causal
attention and right padding, padded positions never influence the real ones (they come later),
so the outputs are exactly those of the masked batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, vmap


class NonFiniteKernelError(ValueError):
    """The kernel or the initial residual has NaN or inf entries (a broken model)."""


IGNORE_INDEX = -100
DEFAULT_MAX_JACOBIAN_BYTES = 2 * 1024**3  # exact (unprojected) Gram: per-example gradients kept


# --------------------------------------------------------------------------------------------
# parameters and the per-example output


def _select_parameters(
    model: torch.nn.Module, params: str | Iterable[str]
) -> dict[str, torch.Tensor]:
    """Named parameters the kernel differentiates: ``"trainable"`` (``requires_grad``; the
    LoRA weights of a PEFT model), ``"all"`` or an explicit list of parameter names."""
    named = dict(model.named_parameters())
    if isinstance(params, str):
        if params == "trainable":
            chosen = [n for n, p in named.items() if p.requires_grad]
        elif params == "all":
            chosen = list(named)
        else:
            raise ValueError(
                f"params must be 'trainable', 'all' or a list of parameter names, got {params!r}."
            )
    else:
        chosen = list(params)
        unknown = [n for n in chosen if n not in named]
        if unknown:
            raise ValueError(
                f"unknown parameter names {unknown[:3]}; use names from model.named_parameters()."
            )
    if not chosen:
        raise ValueError(
            "no parameters to differentiate: the model has no trainable (requires_grad) "
            "parameters. Wrap it with LoRA (peft) or pass params='all'."
        )
    return {n: named[n].detach() for n in chosen}


def _check_batch(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise ValueError(
                f"batch needs {key!r} (see tasks.training.finetune.collate); got {list(batch)}."
            )
    input_ids, labels = batch["input_ids"], batch["labels"]
    if input_ids.ndim != 2 or labels.shape != input_ids.shape:
        raise ValueError(
            "input_ids and labels must both have shape (n_examples, seq_len); got "
            f"{tuple(input_ids.shape)} and {tuple(labels.shape)}."
        )
    if not bool(((labels[:, 1:] != IGNORE_INDEX).sum(dim=1) > 0).all()):
        raise ValueError("every example needs at least one target token (label != -100).")
    mask = batch.get("attention_mask")
    if mask is not None:
        lengths = mask.sum(dim=1, keepdim=True)
        right_padded = mask.bool() == (torch.arange(mask.shape[1]) < lengths.cpu()).to(mask.device)
        if not bool(right_padded.all()):
            raise ValueError(
                "the batch must be right-padded (attention_mask = ones then zeros per row), as "
                "tasks.training.finetune.collate makes it; left padding changes the outputs "
                "without a mask."
            )
        if bool((labels[mask == 0] != IGNORE_INDEX).any()):
            raise ValueError("padding positions must have label -100.")
    return input_ids, labels


def _mean_target_loglik(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row mean log-likelihood of the next-token targets (labels shifted by one)."""
    logits = logits[:, :-1]  # half precision is upcast; float64 models stay float64
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    token = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (token * keep).sum(dim=1) / keep.sum(dim=1)


def _output_fn(model: torch.nn.Module, frozen: dict[str, torch.Tensor]) -> Any:
    """``f(trainable, input_ids, labels)`` for ONE example (1-D tensors): mean target
    log-likelihood, computed with ``functional_call`` so that it can be vmapped and
    differentiated with respect to ``trainable``."""

    def f(trainable: dict[str, torch.Tensor], ids: torch.Tensor, lab: torch.Tensor):
        out = functional_call(model, (trainable, frozen), args=(), kwargs={"input_ids": ids[None]})
        return _mean_target_loglik(out.logits, lab[None])[0]

    return f


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode (no dropout) without torch's 'no batching rule for sdpa' performance
    note (vmap falls back to a per-example loop there, which is correct); restores the mode."""
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*not yet implemented the batching rule.*")
            yield
    finally:
        model.train(was_training)


def _split(model: torch.nn.Module, params: str | Iterable[str]):
    trainable = _select_parameters(model, params)
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in trainable}
    frozen.update(dict(model.named_buffers()))
    device = next(iter(trainable.values())).device
    return trainable, frozen, device


def per_example_outputs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, chunk_size: int = 8
) -> torch.Tensor:
    """Per-example output ``f_i``: mean log-likelihood of example ``i``'s target tokens.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM (transformers, optionally wrapped by peft). Run in eval mode.
    batch : dict of tensors
        Right-padded ``input_ids``, ``attention_mask``, ``labels`` (``-100`` = not a target).
    chunk_size : int
        Examples per vmapped forward pass.

    Returns
    -------
    torch.Tensor, shape (n,), float64
        ``f_i <= 0``; the NTK residual is ``r0 = f - 0 = f`` (see the module docstring).
    """
    input_ids, labels = _check_batch(batch)
    params, _, device = _split(model, "all")
    buffers = dict(model.named_buffers())
    mask = batch.get("attention_mask", torch.ones_like(input_ids))
    outs = []
    # A plain batched forward (with the mask): no gradient is needed, so no vmap either.
    with _eval_mode(model), torch.no_grad():
        for start in range(0, input_ids.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            kwargs = {
                "input_ids": input_ids[rows].to(device),
                "attention_mask": mask[rows].to(device),
            }
            logits = functional_call(model, (params, buffers), args=(), kwargs=kwargs).logits
            outs.append(_mean_target_loglik(logits, labels[rows].to(device)))
    return torch.cat(outs).double()


# --------------------------------------------------------------------------------------------
# the kernel


def empirical_ntk(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    params: str | Iterable[str] = "trainable",
    projection_dim: int | None = None,
    seed: int = 0,
    chunk_size: int = 8,
    projection_rows: int = 65_536,
    max_jacobian_bytes: int = DEFAULT_MAX_JACOBIAN_BYTES,
) -> torch.Tensor:
    """Empirical NTK ``Theta_ij = <grad f_i, grad f_j>`` of a probe batch (float64, CPU).

    One algorithm (chunked per-example gradients accumulated into one Gram matrix), kept in
    one function.

    Per-example gradients come from ``torch.func.vmap(torch.func.grad(f))`` over chunks of
    ``chunk_size`` examples; the Gram matrix is accumulated in float64 per parameter block.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM; a PEFT (LoRA) model by default differentiates its adapter weights only.
    batch : dict of tensors
        Right-padded ``input_ids``, ``attention_mask``, ``labels``
        (``tasks.training.finetune.collate``).
    params : {"trainable", "all"} or list of str
        Parameters of the kernel: those with ``requires_grad`` (default), all, or by name.
    projection_dim : int, optional
        Project every per-example gradient with a Gaussian matrix ``R / sqrt(k)``,
        ``R_ij ~ N(0, 1)``, ``k = projection_dim`` (Johnson-Lindenstrauss: ``Theta`` is preserved
        in expectation, relative error ~ ``1 / sqrt(k)``). ``R`` is generated per parameter block
        in slices of ``projection_rows`` rows from ``seed`` (on the parameters' device), so memory
        stays bounded whatever the parameter count; use it for full-gradient kernels. ``R``
        depends on ``seed``, ``projection_rows`` and the device's generator, not on
        ``chunk_size``.
    seed : int
        Seed of the projection (unused without one).
    chunk_size : int
        Examples per vmapped gradient computation (memory ~ chunk_size x parameters).
    projection_rows : int
        Rows of the projection generated at once.
    max_jacobian_bytes : int
        Without a projection all per-example gradients are kept; refuse beyond this size.

    Returns
    -------
    torch.Tensor, shape (n, n), float64 on the CPU
        Symmetric positive semi-definite.
    """
    input_ids, labels = _check_batch(batch)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if projection_dim is not None and projection_dim < 1:
        raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim}.")
    trainable, frozen, device = _split(model, params)
    n = input_ids.shape[0]
    n_params = sum(p.numel() for p in trainable.values())
    item = next(iter(trainable.values())).element_size()
    if projection_dim is None and n * n_params * item > max_jacobian_bytes:
        raise ValueError(
            f"the exact kernel would keep {n} x {n_params:,} gradient entries "
            f"({n * n_params * item / 1024**3:.1f} GiB > max_jacobian_bytes); pass "
            "projection_dim (e.g. 1024) or fewer examples."
        )
    per_example_grad = vmap(grad(_output_fn(model, frozen)), in_dims=(None, 0, 0))
    # Exact: float32 gradient rows per parameter block; projected: float64 (n, k) sketch.
    blocks: dict[str, list[torch.Tensor]] = {name: [] for name in trainable}
    sketch = []
    with _eval_mode(model):
        for start in range(0, n, chunk_size):
            ids = input_ids[start : start + chunk_size].to(device)
            lab = labels[start : start + chunk_size].to(device)
            grads = per_example_grad(trainable, ids, lab)
            if projection_dim is None:
                for name, g in grads.items():
                    blocks[name].append(g.detach().reshape(g.shape[0], -1))
            else:
                sketch.append(_project(grads, projection_dim, seed, projection_rows))
            del grads
    if projection_dim is not None:
        s = torch.cat(sketch).cpu()
        theta = s @ s.T
    else:
        theta = torch.zeros(n, n, dtype=torch.float64)
        for name in trainable:
            j = torch.cat(blocks.pop(name)).double()
            theta += (j @ j.T).cpu()
    return 0.5 * (theta + theta.T)  # exact symmetry (float64 rounding of the two halves)


def _project(grads: dict[str, torch.Tensor], k: int, seed: int, rows_at_once: int) -> torch.Tensor:
    """``sum_blocks g_block @ R_block / sqrt(k)`` for a chunk of per-example gradients; the
    random slice of a block depends only on ``(seed, block index, slice index)``, so the
    projection is the same whatever the example chunking."""
    first = next(iter(grads.values()))
    device = first.device
    out = torch.zeros(first.shape[0], k, dtype=torch.float64, device=device)
    gen = torch.Generator(device=device)
    for b, g in enumerate(grads.values()):
        flat = g.detach().reshape(g.shape[0], -1).double()
        for s, lo in enumerate(range(0, flat.shape[1], rows_at_once)):
            hi = min(lo + rows_at_once, flat.shape[1])
            gen.manual_seed(_slice_seed(seed, b, s))
            r = torch.randn(hi - lo, k, generator=gen, device=device, dtype=torch.float32)
            out += flat[:, lo:hi] @ r.double()
    return out / math.sqrt(k)


def _slice_seed(seed: int, block: int, piece: int) -> int:
    return (seed * 1_000_003 + block * 10_007 + piece) % (2**63 - 1)


# --------------------------------------------------------------------------------------------
# spectrum and the F term


def _as_numpy(theta: Any, residual: Any) -> tuple[np.ndarray, np.ndarray]:
    t = theta.detach().cpu().double().numpy() if torch.is_tensor(theta) else np.asarray(theta)
    r = (
        residual.detach().cpu().double().numpy()
        if torch.is_tensor(residual)
        else np.asarray(residual)
    )
    t, r = t.astype(float), r.astype(float).reshape(-1)
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] != r.shape[0]:
        raise ValueError(f"theta must be (n, n) and residual (n,); got {t.shape} and {r.shape}.")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(r))):
        raise NonFiniteKernelError(
            "theta and residual must be finite (got NaN or inf): the model's outputs or "
            "gradients on the probe set are not finite."
        )
    return 0.5 * (t + t.T), r


def _eigh(theta: np.ndarray, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, tiny negative ones from rounding clipped to 0) and the
    projections ``u_k . r0``."""
    lam, u = np.linalg.eigh(theta)
    lam, u = lam[::-1], u[:, ::-1]
    return np.clip(lam, 0.0, None), u.T @ residual


def f_term(theta: Any, residual: Any, eta: float, t: float) -> float:
    """``F = || exp(-eta Theta t) r0 ||^2 = sum_k exp(-2 eta lambda_k t) (u_k . r0)^2``.

    Parameters
    ----------
    theta : (n, n) array or tensor
        Empirical NTK (symmetric PSD; tiny negative eigenvalues are clipped to 0).
    residual : (n,) array or tensor
        ``r0 = f0(X) - f*`` with ``f*_i = 0`` the maximum of the mean log-likelihood, i.e.
        ``r0 = f0(X)`` = the negative mean target NLL per example (:func:`per_example_outputs`).
    eta : float
        Learning rate of the probe (> 0).
    t : float
        Training time in steps (>= 0). ``F(t=0) = ||r0||^2``; ``F`` is non-increasing in ``t``.
    """
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta (the probe's learning rate) must be > 0, got {eta}.")
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"t (training steps) must be >= 0, got {t}.")
    th, r = _as_numpy(theta, residual)
    lam, proj = _eigh(th, r)
    return float(np.sum(np.exp(-2.0 * eta * lam * t) * proj**2))


def ntk_spectrum(
    theta: Any, residual: Any, *, eta: float | None = None, t: float | None = None
) -> dict[str, Any]:
    """Spectrum of the kernel and the alignment of the residual with its eigenvectors.

    Returns
    -------
    dict
        ``eigenvalues`` (descending, float64 array), ``alignment`` ((u_k . r0)^2 / ||r0||^2,
        sums to 1), ``effective_rank`` (exp of the entropy of the normalised eigenvalues, Roy &
        Vetterli 2007), ``participation_ratio`` ((sum lambda)^2 / sum lambda^2), ``trace``,
        ``residual_norm_sq`` (``||r0||^2 = F(t=0)``), ``n``; and ``f_term`` (see
        :func:`f_term`) with ``eta`` and ``t`` when both are given.
    """
    th, r = _as_numpy(theta, residual)
    lam, proj = _eigh(th, r)
    norm_sq = float(r @ r)
    total = float(lam.sum())
    p = lam[lam > 0] / total if total > 0 else np.array([])
    out: dict[str, Any] = {
        "n": int(lam.shape[0]),
        "eigenvalues": lam,
        "alignment": proj**2 / norm_sq if norm_sq > 0 else np.zeros_like(proj),
        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))) if p.size else 0.0,
        "participation_ratio": total**2 / float(np.sum(lam**2)) if total > 0 else 0.0,
        "trace": total,
        "residual_norm_sq": norm_sq,
    }
    if (eta is None) != (t is None):
        raise ValueError("give both eta and t (or neither) to compute f_term.")
    if eta is not None and t is not None:
        out["f_term"] = f_term(th, r, eta, t)
    return out


def ntk_features(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    eta: float,
    t: float,
    **kernel_options: Any,
) -> dict[str, Any]:
    """Kernel, residual, spectrum and ``F(eta, t)`` of ``model`` on ``batch`` in one call.

    ``kernel_options`` go to :func:`empirical_ntk`. Returns the :func:`ntk_spectrum` dict plus
    ``theta`` ((n, n) float64 array) and ``residual`` ((n,) array, ``r0 = f0``).
    """
    theta = empirical_ntk(model, batch, **kernel_options)
    residual = per_example_outputs(model, batch, chunk_size=kernel_options.get("chunk_size", 8))
    out = ntk_spectrum(theta, residual, eta=eta, t=t)
    out["theta"] = theta.numpy()
    out["residual"] = residual.cpu().numpy()
    return out


def f_term_from_spectrum(
    eigenvalues: Any, alignment: Any, residual_norm_sq: float, eta: float, t: float
) -> float:
    """``F(eta, t)`` from a stored spectrum (:func:`ntk_spectrum`'s eigenvalues and alignment).

    ``F = ||r0||^2 sum_k alignment_k exp(-2 eta lambda_k t)``; equal to :func:`f_term` on the
    kernel the spectrum came from, without keeping the kernel.
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    align = np.asarray(alignment, dtype=np.float64)
    if lam.shape != align.shape:
        raise ValueError("eigenvalues and alignment must have the same length")
    if eta < 0 or t < 0:
        raise ValueError(f"eta and t must be >= 0 (got eta={eta}, t={t})")
    return float(residual_norm_sq * np.sum(align * np.exp(-2.0 * eta * lam * t)))
