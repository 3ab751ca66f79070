"""Read and validate loss tables (``lens_model.loss_table.LossTable``) for the replay benchmark
(docs/replay.md) and the audit.

``load_loss_table`` is a plain function; ``load_loss_table_task`` is its Prefect task, built on
first access so that loading a table (``lensllm benchmark`` without ``--prefect``) does not
import Prefect.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from lens_model.loss_table import LossTable
from tasks.records.errors import LossTableError, MissingFileError

__all__ = [
    "LIVE_TABLES",
    "LossTable",
    "LossTableError",
    "live_table_paths",
    "load_loss_table",
    "table_from_frame",
]

# The live audits' loss tables, committed as benchmarks/results/<name>/<name>.csv: with FLAN,
# the tables the shipped error prior (configs/error_prior.json) is fitted on.
LIVE_TABLES = (
    "zoo-wordnet",
    "zoo-manpages",
    "audit-translation",
    "audit-examples",
    "audit-docstrings",
    "audit-next-line",
)
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def live_table_paths() -> list[str]:
    """The committed live tables' paths (``LIVE_TABLES``), in that order."""
    return [str(RESULTS / name / f"{name}.csv") for name in LIVE_TABLES]


def load_loss_table(path: str) -> LossTable:
    """Read and validate a loss table CSV.

    The first column names the models; numeric columns (``0, 200, 400, ...``) hold the test loss
    after fine-tuning on that many examples (0 = zero-shot), doubling from column to column;
    ``size`` is the parameter count; ``family`` is optional. The table's name is the file stem
    upper-cased. Raises ``LossTableError`` naming the first problem.
    """
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"loss table {str(file)!r} does not exist")
    try:
        frame = pd.read_csv(file)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise LossTableError(f"{file.name}: not a readable CSV table ({err})") from err
    with file.open(newline="", errors="replace") as fh:  # pandas renames duplicates: read raw
        header = [c.strip() for c in next(csv.reader(fh), [])]
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise LossTableError(
            f"loss table {file.name}: duplicate column(s) {dupes}; each size must appear once"
        )
    return table_from_frame(frame, file.stem.upper(), where=f"loss table {file.name}")


def table_from_frame(
    frame: pd.DataFrame, name: str, *, where: str | None = None, doubling: bool = True
) -> LossTable:
    """A :class:`LossTable` from a frame in the CSV format (model names in the first column,
    one numeric column per size, ``size``, optional ``family``), or ``LossTableError``
    saying what is wrong (``where`` names the table; ``doubling``: require a ladder that
    doubles from column to column with at least 3 non-zero sizes, as the replay does)."""
    where = where or f"loss table {name}"
    if "size" not in frame.columns:
        raise LossTableError(f"{where}: missing the 'size' column (parameter count per model)")
    size_cols = [c for c in frame.columns if str(c).strip().isdigit()]
    if not size_cols:
        raise LossTableError(f"{where}: no loss columns (numeric headers such as 0, 200, 400)")
    sizes = np.array([int(c) for c in size_cols])
    if doubling:
        _check_ladder(where, sizes)
    if len(frame) < 2:
        raise LossTableError(f"{where}: needs at least 2 models to select from, has {len(frame)}")
    losses = frame[size_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    model_col = frame.columns[0]
    bad = ~np.isfinite(losses) | (losses <= 0)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise LossTableError(
            f"{where}: {int(bad.sum())} loss value(s) are NaN, missing or not positive, e.g. "
            f"model {frame[model_col].iloc[r]!r} at size {sizes[c]} "
            f"(value {frame[size_cols[c]].iloc[r]!r})"
        )
    model_sizes = pd.to_numeric(frame["size"], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(model_sizes) & (model_sizes > 0)):
        raise LossTableError(f"{where}: the 'size' column must hold positive parameter counts")
    families = frame["family"].astype(str).tolist() if "family" in frame else [""] * len(frame)
    try:
        return LossTable(
            name=name,
            models=frame[model_col].astype(str).tolist(),
            sizes=sizes,
            losses=losses,
            model_sizes=model_sizes,
            families=families,
        )
    except ValueError as err:  # e.g. sizes out of order without the doubling check
        raise LossTableError(f"{where}: {err}") from err


def _check_ladder(where: str, sizes: np.ndarray) -> None:
    if np.any(np.diff(sizes) <= 0):
        raise LossTableError(f"{where}: loss columns must be in increasing order of size")
    positive = sizes[sizes > 0]
    if len(positive) < 3:
        raise LossTableError(f"{where}: needs at least 3 non-zero sizes, has {len(positive)}")
    ratios = positive[1:] / positive[:-1]
    if not np.all(ratios == 2):
        i = int(np.flatnonzero(ratios != 2)[0])
        raise LossTableError(
            f"{where}: the ladder must double from column to column; "
            f"{positive[i]} is followed by {positive[i + 1]}"
        )


def __getattr__(name: str):
    if name == "load_loss_table_task":
        from prefect import task

        wrapper = task(name="load-loss-table")(load_loss_table)
        globals()[name] = wrapper
        return wrapper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
