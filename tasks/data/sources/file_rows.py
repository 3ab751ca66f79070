"""Read a local data file into rows that remember where they sit in the file.

Every row carries its position (``line 57`` of a JSONL or CSV file, ``record 3`` of a JSON
array, ``row 12`` of a Parquet file), so an error about one row can name it. A record that
cannot be read as a row (a line that is not JSON, a record that is a list, a CSV line with the
wrong number of fields) becomes a :class:`BadRow` instead of stopping the read: what happens to
bad rows is the ``dataset.on_bad_rows`` policy's business (:mod:`tasks.data.sources.rows`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.records.errors import DataError


@dataclass(frozen=True)
class BadRow:
    """A record that cannot become an example: where it is and what is wrong with it."""

    position: str
    problem: str

    def __str__(self) -> str:
        return f"{self.position}: {self.problem}"


@dataclass
class FileRows:
    """A file's readable records (column name -> values, missing keys as ``None``), the
    position of each, and the records that could not be read."""

    columns: dict[str, list[Any]] = field(default_factory=dict)
    positions: list[str] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    header: str | None = None  # where the column names are, when one line holds them

    @classmethod
    def of_columns(cls, columns: dict[str, list[Any]]) -> FileRows:
        """A column mapping (a hub data set's ``to_dict()``) with rows numbered from 1."""
        n_rows = len(next(iter(columns.values()), []))
        return cls(dict(columns), [f"row {i}" for i in range(1, n_rows + 1)])

    def add(self, record: dict[str, Any], position: str) -> None:
        n = len(self.positions)
        for key in record:
            self.columns.setdefault(str(key), [None] * n)
        for key, values in self.columns.items():
            values.append(record.get(key))
        self.positions.append(position)


def _text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        line = file.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(
            f"{file} line {line}: not UTF-8 text ({err.reason} at byte {err.start}); save the "
            "file as UTF-8"
        ) from None


def type_name(value: Any) -> str:
    """``"a list"``, ``"a number"``, ...: what a JSON value is, for messages."""
    return {
        list: "a list",
        dict: "an object",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _add_record(rows: FileRows, record: Any, position: str) -> None:
    if isinstance(record, dict):
        rows.add(record, position)
    else:
        rows.bad.append(
            BadRow(
                position,
                f"the record is {type_name(record)}, not an object of named fields "
                '({"field": value, ...})',
            )
        )


def read_json_lines(file: Path, lines: list[str] | None = None) -> FileRows:
    """JSON Lines: one object per line; blank lines are skipped."""
    rows = FileRows()
    for number, line in enumerate(_text(file).splitlines() if lines is None else lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            rows.bad.append(
                BadRow(f"line {number}", f"not valid JSON ({err.msg} at column {err.colno})")
            )
            continue
        _add_record(rows, record, f"line {number}")
    return rows


def read_json(file: Path) -> FileRows:
    """A ``.json`` file: an array of objects, or JSON Lines under a ``.json`` name."""
    text = _text(file)
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        # Several top-level values (JSON Lines) or one broken document: the per-line reader
        # names the line in both cases.
        return read_json_lines(file, text.splitlines())
    if isinstance(document, dict):
        # One object is one record (JSON Lines of one line).
        document = [document]
    if not isinstance(document, list):
        raise DataError(
            f"{file}: the file holds {type_name(document)}, not an array of records; write "
            'one object per record, e.g. [{"prompt": "...", "target": "..."}, ...]'
        )
    rows = FileRows()
    for number, record in enumerate(document, 1):
        _add_record(rows, record, f"record {number}")
    return rows


def read_csv(file: Path, delimiter: str = ",") -> FileRows:
    """CSV/TSV with a header line; a line with more or fewer fields than the header is bad."""
    rows = FileRows()
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if not header:
                raise DataError(f"{file} line 1: no header line; start the file with column names")
            rows.columns = {name: [] for name in header}
            rows.header = "line 1 (the header)"
            for record in reader:
                # line_num is the physical line a record ends on (quoted fields may span lines)
                position = f"line {reader.line_num}"
                if not record:
                    continue
                if len(record) != len(header):
                    rows.bad.append(
                        BadRow(
                            position,
                            f"{len(record)} fields but the header has {len(header)} "
                            "(an unquoted delimiter in a value, or a missing field)",
                        )
                    )
                    continue
                rows.add(dict(zip(header, record, strict=True)), position)
        except csv.Error as err:
            raise DataError(
                f"{file} line {reader.line_num}: not valid CSV ({err}); quote values that hold "
                "the delimiter, a quote or a line break"
            ) from None
        except UnicodeDecodeError as err:
            raise DataError(f"{file}: not UTF-8 text ({err.reason}); save it as UTF-8") from None
    return rows


def read_parquet(file: Path) -> FileRows:
    """A Parquet file; a file pyarrow cannot read is an error that names it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as err:
        raise DataError(
            f"{file}: cannot be read as Parquet ({err}); write it again (e.g. with "
            "pandas.DataFrame.to_parquet) or give it the extension of its real format"
        ) from None
    rows = FileRows(columns=table.to_pydict())
    rows.positions = [f"row {i}" for i in range(1, table.num_rows + 1)]
    return rows


def read_text(file: Path) -> FileRows:
    """Plain text: one row per line, in the column ``text``."""
    lines = _text(file).splitlines()
    return FileRows(
        columns={"text": lines}, positions=[f"line {i}" for i in range(1, len(lines) + 1)]
    )


def read_rows(file: Path, builder: str) -> FileRows:
    """The rows of ``file`` read as ``builder`` (json, csv, parquet, text)."""
    if builder == "json":
        if file.suffix.lower() == ".jsonl":
            return read_json_lines(file)
        return read_json(file)
    if builder == "csv":
        return read_csv(file, "\t" if file.suffix.lower() == ".tsv" else ",")
    if builder == "parquet":
        return read_parquet(file)
    return read_text(file)
