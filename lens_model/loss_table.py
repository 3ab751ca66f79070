"""A loss table: every candidate's test loss after fine-tuning on each size of a ladder.

The replay benchmark's published tables, an audit's measured table and the tests' synthetic
tables are all one :class:`LossTable`; reading one from a file is the caller's business
(``tasks/reporting/loss_tables.py`` reads the CSV format).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np


def _frozen(values, dtype) -> np.ndarray:
    array = np.array(values, dtype=dtype)  # a copy: the caller's array may change later
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class LossTable:
    """Test losses of ``N`` candidates fine-tuned on each of ``m`` sizes (validated).

    Parameters
    ----------
    name : str
        Name of the table (the dataset), used in reports.
    models : sequence of str (N,)
        Candidate names, one per row.
    sizes : array_like of int (m,)
        Column sizes, strictly increasing, 0 = zero-shot.
    losses : array_like (N, m)
        Positive, finite test losses.
    model_sizes : array_like (N,)
        Positive parameter counts (the unit of the Cost metric).
    families : sequence of str (N,), optional
        Model family per candidate ("" when unknown).

    The arrays are stored read-only copies; two tables are equal when every field is.
    """

    name: str
    models: tuple[str, ...]
    sizes: np.ndarray
    losses: np.ndarray
    model_sizes: np.ndarray
    families: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        models = tuple(str(m) for m in self.models)
        n = len(models)
        families = tuple(str(f) for f in self.families) if self.families else ("",) * n
        sizes = _frozen(self.sizes, np.int64)
        losses = _frozen(self.losses, float)
        model_sizes = _frozen(self.model_sizes, float)
        _check(self.name, n, sizes, losses, model_sizes, families)
        for key, value in (
            ("models", models),
            ("families", families),
            ("sizes", sizes),
            ("losses", losses),
            ("model_sizes", model_sizes),
        ):
            object.__setattr__(self, key, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LossTable):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
        )

    __hash__ = None  # mutable-looking arrays inside: not a dict key

    def losses_at(self, size: int) -> np.ndarray:
        """Every candidate's loss at ``size`` (a column of the table), shape (N,)."""
        hits = np.flatnonzero(self.sizes == size)
        if hits.size == 0:
            raise ValueError(f"the table has no column for the target size {size}")
        return self.losses[:, int(hits[0])]


def _check(name, n: int, sizes, losses, model_sizes, families) -> None:
    """``ValueError`` naming the first broken invariant of a table."""
    where = f"loss table {name!r}"
    if n < 2:
        raise ValueError(f"{where}: needs at least 2 models to select from, has {n}")
    if sizes.ndim != 1 or len(sizes) == 0 or np.any(sizes < 0) or np.any(np.diff(sizes) <= 0):
        raise ValueError(f"{where}: sizes must be non-negative and strictly increasing")
    if losses.shape != (n, len(sizes)):
        raise ValueError(
            f"{where}: losses have shape {losses.shape}, expected (models, sizes) = "
            f"({n}, {len(sizes)})"
        )
    if not np.all(np.isfinite(losses) & (losses > 0)):
        raise ValueError(f"{where}: every loss must be finite and positive")
    if model_sizes.shape != (n,) or not np.all(np.isfinite(model_sizes) & (model_sizes > 0)):
        raise ValueError(f"{where}: model_sizes must hold one positive parameter count per model")
    if len(families) != n:
        raise ValueError(f"{where}: {len(families)} families for {n} models")
