"""Heavy-tailed self-regularisation metrics of weight matrices (the NLPmetrics baseline).

Martin & Mahoney ("Predicting trends in the quality of state-of-the-art neural networks
without access to training or testing data", Nature Communications 12, 4122, 2021) rank
pretrained models by the spectra of their weight matrices alone, with no data and no
fine-tuning. For an ``N x M`` weight matrix ``W`` (``N >= M``, transposed if needed):

* the **empirical spectral density** is the set of eigenvalues of ``X = W^T W``, i.e. the
  squared singular values of ``W`` (the convention of the published metric: weightwatcher's
  default, ``normalize=False``; the ``1 / N`` of the random-matrix theory papers is left out);
* its tail is fitted by a power law ``p(lambda) ~ lambda^(-alpha)`` for ``lambda >= xmin``:
  ``alpha`` is the Clauset-Shalizi-Newman maximum-likelihood estimate
  ``1 + n / sum_i ln(lambda_i / xmin)`` (SIAM Review 51, 2009) and ``xmin`` the candidate
  (every eigenvalue that leaves at least ``min_tail`` in the tail) with the smallest
  Kolmogorov-Smirnov distance between the tail and the fitted law;
* the **spectral norm** is ``lambda_max`` (the largest eigenvalue of ``X``) and
  ``log_spectral_norm = log10(lambda_max)``;
* the **weighted alpha** (the paper's ``alpha-hat``) is ``alpha * log10(lambda_max)``.

A model's summary (:func:`summarize`) is the mean of each over its layers. The literature
ranks models by the **mean weighted alpha, lower = better** (the metric that tracked test
accuracy best across architectures and sizes in the paper); mean alpha (lower = better
trained layers) and mean log spectral norm are reported beside it.

Invariances: every metric is invariant to transposing a matrix (``W`` and ``W^T`` have the same
singular values and ``N`` is the larger side); ``alpha`` and ``xmin / lambda_max`` are
invariant to scaling ``W``; ``lambda_max`` scales as the square, so the log spectral norm and
the weighted alpha are not (they are meant to see the weights' scale).

``weightwatcher`` (PyPI 0.7.7, Apache-2.0, the authors' package) is not used: it would add
``powerlaw`` to the install and import matplotlib and scikit-learn, and on smollm2-135m's 210
decoder matrices it took 84 s against 16 s here (one thread each, same loaded machine). Its
per-layer alphas equal these where both pick the same ``xmin``; its eigenvalues
are the same ``s^2``.

Why no ``1 / N``: with it, ``lambda_max < 1`` for the decoder matrices of small LLMs, so
``log10(lambda_max) < 0`` and the weighted alpha is negative: a heavier-tailed (smaller)
alpha then gives a *larger* weighted alpha, the reverse of what the metric is meant to reward,
and the ranking flips with the matrix shape. Without it the weighted alphas are positive and
ordered as in Martin & Mahoney's tables.

Everything is pure numpy (no I/O): callers pass matrices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_MIN_TAIL = 10
#: Elements of the (candidates x tail) KS matrix evaluated at once: bounds memory (~32 MiB).
_KS_CHUNK_ELEMENTS = 1 << 22
#: Bytes of stacked float64 matrices given to one batched eigensolver call.
_EIG_CHUNK_BYTES = 64 << 20
#: What :func:`summarize` returns, each the mean over layers (lower = better for all three).
SUMMARY_METRICS = ("alpha_weighted", "alpha", "log_spectral_norm")
#: The summary metric the literature ranks with.
RANKING_METRIC = "alpha_weighted"


@dataclass(frozen=True)
class PowerLawFit:
    """A power-law fit of a spectrum's tail: exponent, where the tail starts, the KS distance
    of the fit and how many eigenvalues the tail holds."""

    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int


@dataclass(frozen=True)
class LayerSpectrum:
    """The metrics of one weight matrix (``rows x cols`` as given)."""

    name: str
    rows: int
    cols: int
    n_eigenvalues: int
    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int
    lambda_max: float
    log_spectral_norm: float
    alpha_weighted: float

    def as_dict(self) -> dict:
        return asdict(self)


def eigenvalues(matrices: np.ndarray) -> np.ndarray:
    """Eigenvalues of ``X = W^T W`` (squared singular values) of one matrix or a stack of
    equal-shape matrices.

    Parameters
    ----------
    matrices : array, shape (..., rows, cols)
        The result has ``min(rows, cols)`` eigenvalues per matrix.

    Returns
    -------
    ndarray, shape (..., min(rows, cols))
        float64, ascending.

    Notes
    -----
    Computed as the eigenvalues of the smaller Gram matrix in float64 (``eigvalsh``), three
    times faster than an SVD here; the absolute error, about ``1e-16 lambda_max``, is far below
    the rank threshold of :func:`nonzero`.
    """
    w = np.asarray(matrices, dtype=np.float64)
    if w.ndim < 2 or min(w.shape[-2:]) < 1:
        raise ValueError(f"need a 2-D weight matrix (or a stack of them), got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("the weight matrix has NaN or inf entries")
    wt = np.swapaxes(w, -1, -2)
    gram = wt @ w if w.shape[-2] >= w.shape[-1] else w @ wt
    return np.linalg.eigvalsh(gram)


def fit_power_law(values: Sequence[float] | np.ndarray, *, min_tail: int = DEFAULT_MIN_TAIL):
    """Clauset-Shalizi-Newman power-law fit of the tail of ``values``.

    Every value that leaves at least ``min_tail`` values at or above it is a candidate
    ``xmin``; for each, ``alpha = 1 + n / sum ln(x_i / xmin)`` over the tail, and the chosen
    ``xmin`` minimises the two-sided Kolmogorov-Smirnov distance between the tail's empirical
    CDF and ``1 - (x / xmin)^(1 - alpha)`` (the first candidate on ties). All candidates are
    evaluated at once, in chunks that bound memory.

    Parameters
    ----------
    values : 1-D array of positive finite floats (eigenvalues), any order.
    min_tail : the fewest values a tail may hold (at least 2).

    Returns
    -------
    PowerLawFit
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.ndim != 1:
        raise ValueError(f"fit_power_law needs a 1-D array of values, got shape {x.shape}")
    if min_tail < 2:
        raise ValueError(f"min_tail must be at least 2, got {min_tail}")
    if x.size < min_tail:
        raise ValueError(f"a power-law fit needs at least min_tail={min_tail} values, got {x.size}")
    if not (np.isfinite(x).all() and x[0] > 0):
        raise ValueError("a power-law fit needs positive finite values (drop zero eigenvalues)")
    logx = np.log(x)
    n = x.size
    suffix = np.cumsum(logx[::-1])[::-1]  # suffix[k] = sum of ln x_i for i >= k
    starts = np.arange(n - min_tail + 1)
    n_tail = n - starts
    spread = suffix[starts] - n_tail * logx[starts]
    # a tail of equal values has no exponent: never chosen
    alpha = np.where(spread > 0, 1.0 + n_tail / np.where(spread > 0, spread, 1.0), np.nan)
    distance = _ks_distances(logx, starts, alpha)
    distance[np.isnan(alpha)] = np.inf
    if not np.isfinite(distance).any():
        raise ValueError("every candidate tail holds equal values: no power law to fit")
    best = int(np.argmin(distance))
    return PowerLawFit(
        alpha=float(alpha[best]),
        xmin=float(x[starts[best]]),
        ks_distance=float(distance[best]),
        n_tail=int(n_tail[best]),
    )


def _ks_distances(logx: np.ndarray, starts: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """KS distance of each candidate tail ``x[k:]`` from its fitted power law (vectorised over
    the candidates; rows in chunks of at most ``_KS_CHUNK_ELEMENTS`` elements)."""
    n = logx.size
    out = np.empty(starts.size)
    index = np.arange(n)
    rows = max(1, _KS_CHUNK_ELEMENTS // n)
    for lo in range(0, starts.size, rows):
        k = starts[lo : lo + rows, None]
        a = np.nan_to_num(alpha[lo : lo + rows, None], nan=2.0)
        n_tail = n - k
        rank = index[None, :] - k  # position within the tail (negative: not in it)
        model_cdf = 1.0 - np.exp((1.0 - a) * np.maximum(logx[None, :] - logx[k], 0.0))
        gap = np.maximum(np.abs((rank + 1) / n_tail - model_cdf), np.abs(rank / n_tail - model_cdf))
        out[lo : lo + rows] = np.where(rank >= 0, gap, 0.0).max(axis=1)
    return out


def nonzero(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The eigenvalues of a ``shape`` matrix above its numerical rank threshold (the
    ``numpy.linalg.matrix_rank`` tolerance for float32 weights, on singular values)."""
    tol = (max(shape) * np.finfo(np.float32).eps) ** 2 * values.max(initial=0.0)
    return values[values > tol]


def layer_spectrum(
    name: str, values: np.ndarray, shape: tuple[int, int], *, min_tail: int = DEFAULT_MIN_TAIL
) -> LayerSpectrum:
    """The metrics of one matrix of ``shape`` from its eigenvalues (:func:`eigenvalues`)."""
    kept = nonzero(np.asarray(values, dtype=np.float64), shape)
    if kept.size < min_tail:
        raise ValueError(
            f"matrix {name!r} {shape[0]}x{shape[1]} has {kept.size} nonzero eigenvalues, fewer "
            f"than min_tail={min_tail}: leave it out or lower min_tail"
        )
    fit = fit_power_law(kept, min_tail=min_tail)
    lambda_max = float(kept.max())
    log_norm = float(np.log10(lambda_max))
    return LayerSpectrum(
        name=name,
        rows=int(shape[0]),
        cols=int(shape[1]),
        n_eigenvalues=int(kept.size),
        alpha=fit.alpha,
        xmin=fit.xmin,
        ks_distance=fit.ks_distance,
        n_tail=fit.n_tail,
        lambda_max=lambda_max,
        log_spectral_norm=log_norm,
        alpha_weighted=fit.alpha * log_norm,
    )


def layer_spectra(
    matrices: Mapping[str, np.ndarray], *, min_tail: int = DEFAULT_MIN_TAIL
) -> list[LayerSpectrum]:
    """The metrics of every named 2-D matrix, in the mapping's order.

    Matrices of equal shape go through one batched eigensolver call (in chunks of at most
    64 MiB of float64), the power-law fits are per matrix.
    """
    if not matrices:
        raise ValueError("no weight matrices given")
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, w in matrices.items():
        shape = np.shape(w)
        if len(shape) != 2:
            raise ValueError(f"matrix {name!r} has shape {shape}; only 2-D weights have a spectrum")
        groups.setdefault(tuple(shape), []).append(name)
    found: dict[str, LayerSpectrum] = {}
    for shape, names in groups.items():
        per_chunk = max(1, _EIG_CHUNK_BYTES // (8 * shape[0] * shape[1]))
        for lo in range(0, len(names), per_chunk):
            chunk = names[lo : lo + per_chunk]
            values = eigenvalues(np.stack([np.asarray(matrices[n]) for n in chunk]))
            for name, v in zip(chunk, values, strict=True):
                found[name] = layer_spectrum(name, v, shape, min_tail=min_tail)
    return [found[name] for name in matrices]


def summarize(layers: Sequence[LayerSpectrum]) -> dict[str, float]:
    """A model's metrics: the mean over its layers of each of :data:`SUMMARY_METRICS`."""
    if not layers:
        raise ValueError("no layers to summarise")
    return {
        metric: float(np.mean([getattr(layer, metric) for layer in layers]))
        for metric in SUMMARY_METRICS
    }
