"""Local data files (``.json``, ``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``, ``.txt``), read row
by row (:mod:`.file_rows`, so a bad row is named by its line) and mapped to examples with
``prompt_field`` / ``target_field`` or a ``template`` such as ``"Question: {question}\\nAnswer:"``
plus ``target_field``.

``source`` is the file path (format from its extension), or a builder name (``json``, ``csv``,
``parquet``, ``text``) with the file in ``path``.
"""

from __future__ import annotations

from pathlib import Path

from tasks.data.sources.file_rows import FileRows, read_rows
from tasks.data.sources.rows import Loaded, examples_for
from tasks.records.errors import DataError, MissingFileError
from tasks.records.schema import DataSpec, Example

NAME = "file"
# File formats read, by file extension (the builder names are `datasets`'s).
FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}
BUILDERS = frozenset(FILE_BUILDERS.values())


def handles(source: str) -> bool:
    """Whether ``source`` names a local file (by extension) or a builder name."""
    return source in BUILDERS or Path(source).suffix.lower() in FILE_BUILDERS


def file_builder(path: str | Path) -> str:
    """The ``datasets`` builder name (json, csv, parquet, text) for a file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise DataError(
            f"cannot infer the format of {path}: extension {suffix!r} is not one of "
            f"{sorted(FILE_BUILDERS)}"
        )
    return FILE_BUILDERS[suffix]


def data_file(spec: DataSpec) -> Path:
    """The file a file source reads."""
    if spec.source in BUILDERS:
        if spec.path is None:
            raise DataError(f"source {spec.source!r} needs path= naming the data file")
        return Path(spec.path)
    return Path(spec.source)


def load_rows(spec: DataSpec) -> FileRows:
    """The file's rows, each with its line (or record, or row) number."""
    file = data_file(spec)
    if not file.is_file():
        raise MissingFileError(f"data file {file} does not exist")
    builder = spec.source if spec.source in BUILDERS else file_builder(file)
    return read_rows(file, builder)


def read(spec: DataSpec) -> Loaded:
    """The examples of a local file, mapped with the spec's fields, and the bad rows skipped."""
    return examples_for(load_rows(spec), spec, str(data_file(spec)))


def load(spec: DataSpec) -> list[Example]:
    """The examples of a local file, mapped with the spec's fields."""
    return read(spec).examples


def files(spec: DataSpec) -> list[Path]:
    """The data file (its stamp keys the data cache)."""
    if spec.source in BUILDERS and spec.path is None:
        return []
    return [data_file(spec)]
