"""Field mapping of tabular sources (local files, hub data sets): columns -> examples."""

from __future__ import annotations

import json
import math
import string
import warnings
from dataclasses import dataclass, field
from typing import Any

from tasks.data.sources.file_rows import BadRow, FileRows, type_name
from tasks.data.splits import short_hash
from tasks.records.errors import DataError
from tasks.records.schema import DataSpec, Example

# Empty rows are dropped with a warning up to this fraction; above it the data set is rejected.
MAX_EMPTY_FRACTION = 0.05
# Positions of bad, empty or converted rows named in a message; the rest are counted.
SHOWN = 5


def _template_fields(template: str) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise DataError(f"template {template!r} is not a valid format string: {err}") from err
    bad = [name for name in names if not name.isidentifier() or name == ""]
    if bad:
        raise DataError(
            f"template {template!r} may only use named placeholders like '{{question}}'; "
            f"got {bad}; write literal braces as '{{{{' and '}}}}'"
        )
    return list(dict.fromkeys(names))


def _positions(positions: list[str]) -> str:
    """``"lines 4, 9, 12 and 3 more"`` (one word for positions of one kind)."""
    more = f" and {len(positions) - SHOWN} more" if len(positions) > SHOWN else ""
    words = {p.split(" ", 1)[0] for p in positions}
    if len(words) == 1 and all(p.count(" ") == 1 for p in positions):
        numbers = [p.split(" ", 1)[1] for p in positions[:SHOWN]]
        plural = "s" if len(positions) > 1 else ""
        return f"{words.pop()}{plural} {', '.join(numbers)}{more}"
    return ", ".join(positions[:SHOWN]) + more


@dataclass
class Loaded:
    """A source's examples and the bad rows ``on_bad_rows: skip`` dropped."""

    examples: list[Example]
    skipped: list[BadRow] = field(default_factory=list)

    def skipped_summary(self) -> str:
        """``"3 (line 4, line 9, line 12)"``, or ``"0"``."""
        if not self.skipped:
            return "0"
        return f"{len(self.skipped)} ({_positions([b.position for b in self.skipped])})"


def _as_text(value: Any) -> str | None:
    """A field value as text; ``None`` for a value that is not text and cannot become it (a
    list or an object). Numbers and booleans become their JSON spelling (see ``converted``)."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _text_columns(
    table: FileRows, fields: list[str], noted: list[str], source: str
) -> dict[str, list[str | None]]:
    """The fields as text (``None`` for a list or object: a bad row). A number or boolean in a
    ``noted`` field (prompt and target) is read as text with a warning: a group id may be a
    number without one."""
    columns: dict[str, list[str | None]] = {}
    for name in fields:
        values = table.columns[name]
        columns[name] = [_as_text(v) for v in values]
        if name not in noted:
            continue
        converted = [
            p for p, v in zip(table.positions, values, strict=True)
            if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))
        ]  # fmt: skip
        if converted:
            warnings.warn(
                f"{source}: field {name!r} holds a number or boolean in {len(converted)} rows "
                f"({_positions(converted)}); read as text (42 as '42', true as 'true'); quote "
                "them in the file to silence this",
                stacklevel=3,
            )
    return columns


def _check_columns(table: FileRows, wanted: dict[str, list[str]], source: str) -> None:
    where = f"{source} {table.header}" if table.header else source
    n_rows = len(table.positions)
    if not n_rows and table.bad:
        raise DataError(
            f"{source}: none of its {len(table.bad)} rows can be read ({table.bad[0]}); fix the "
            "file (on_bad_rows: skip drops bad rows but leaves nothing here)"
        )
    for role, fields in wanted.items():
        for name in fields:
            if name not in table.columns:
                setting = "template" if role == "prompt_field/template" else role
                raise DataError(
                    f"{where}: {role} {name!r} is not a column (missing in all {n_rows} rows); "
                    f"available columns: {sorted(table.columns)}; rename the column in the file "
                    f"or set dataset.{setting} to one of them"
                )


def _check_empty(columns: dict[str, list[str]], source: str) -> list[bool]:
    """Which rows have an empty field; too many empty rows in one field are an error."""
    n_rows = len(next(iter(columns.values()), []))
    empty = [False] * n_rows
    for name, values in columns.items():
        n_empty = sum(not value.strip() for value in values)
        if n_empty and n_empty > MAX_EMPTY_FRACTION * n_rows:
            raise DataError(
                f"{source}: field {name!r} is missing or empty in {n_empty} of {n_rows} rows "
                f"(more than {MAX_EMPTY_FRACTION:.0%}); fix the data or map another field"
            )
        empty = [e or not value.strip() for e, value in zip(empty, values, strict=True)]
    return empty


def handle_bad_rows(bad: list[BadRow], n_records: int, source: str, policy: str) -> None:
    """``policy`` ``error``: one line naming the first bad row (and how many more there are);
    ``skip``: a warning with the count and the first few positions."""
    if not bad:
        return
    if policy == "error":
        more = ""
        if len(bad) > 1:
            more = f" ({len(bad) - 1} more bad rows: {_positions([b.position for b in bad[1:]])})"
        raise DataError(
            f"{source} {bad[0]}{more}; fix or remove the row, or set dataset.on_bad_rows: skip "
            "to drop bad rows"
        )
    warnings.warn(
        f"{source}: skipping {len(bad)} of {n_records} rows that cannot be read (dataset."
        f"on_bad_rows: skip): {_positions([str(b) for b in bad])}",
        stacklevel=3,
    )


def _mapped_fields(
    prompt_field: str | None,
    target_field: str | None,
    template: str | None,
    group_field: str | None,
    source: str,
) -> dict[str, list[str]]:
    """The columns each role of the mapping reads, once the mapping is checked."""
    if target_field is None:
        raise DataError(f"{source}: set target_field to the column holding the target text")
    if (prompt_field is None) == (template is None):
        raise DataError(
            f"{source}: set exactly one of prompt_field (a column) or template (a format string "
            f"with {{field}} placeholders); got prompt_field={prompt_field!r}, "
            f"template={template!r}"
        )
    prompt_fields = [prompt_field] if prompt_field is not None else _template_fields(template)
    wanted = {"target_field": [target_field], "prompt_field/template": prompt_fields}
    if group_field is not None:
        wanted["group_field"] = [group_field]
    return wanted


def _without_empty(table, columns, kept: list[int], text_fields, source: str) -> list[int]:
    """``kept`` without the rows whose prompt or target is empty (a warning names them)."""
    empty = _check_empty({f: [columns[f][i] for i in kept] for f in text_fields}, source)
    if any(empty):
        dropped = [table.positions[i] for i, e in zip(kept, empty, strict=True) if e]
        warnings.warn(
            f"{source}: dropping {len(dropped)} of {len(kept)} rows with an empty prompt or "
            f"target field ({_positions(dropped)})",
            stacklevel=3,
        )
    return [i for i, e in zip(kept, empty, strict=True) if not e]


def _example(columns, i, prompt_field, target_field, template, group_field, prompt_fields) -> dict:
    """Row ``i`` as an example: its prompt (from the field or the template), target and group
    (the group field, else a hash of the prompt)."""
    if template is not None:
        prompt = template.format_map({f: columns[f][i] for f in prompt_fields})
    else:
        prompt = columns[prompt_field][i]
    group = columns[group_field][i] if group_field is not None else short_hash(prompt)
    return {"prompt": prompt, "target": columns[target_field][i], "group": group}


def examples_from_rows(
    rows: dict[str, list[Any]] | FileRows,
    *,
    prompt_field: str | None = None,
    target_field: str | None = None,
    template: str | None = None,
    group_field: str | None = None,
    source: str = "data set",
    on_bad_rows: str = "error",
) -> Loaded:
    """Map columns of a table to prompt/target examples.

    Parameters
    ----------
    rows : dict of str to list, or FileRows
        Column name -> values (``Dataset.to_dict()`` or any column mapping), or a file's rows
        with their positions and the records that could not be read.
    prompt_field, template : str, optional
        Exactly one: the column holding the prompt, or a format string whose ``{field}``
        placeholders are filled from each row (``""`` gives an empty prompt: language modelling).
    target_field : str
        The column holding the target text (the loss is measured on it).
    group_field : str, optional
        Column whose equal values must stay in one split; by default rows with identical prompts
        form a group.
    source : str
        Name of the data source (the file), used in messages.
    on_bad_rows : {"error", "skip"}
        What to do with a row that cannot be read or holds a list or object where text belongs.
        Numbers and booleans are read as text, with a warning.

    Raises
    ------
    DataError
        (a ``ValueError``) When a field is missing, a row is bad (``on_bad_rows="error"``), or
        more than 5 % of rows have an empty prompt or target (fewer are dropped with a warning).
    """
    table = rows if isinstance(rows, FileRows) else FileRows.of_columns(rows)
    wanted = _mapped_fields(prompt_field, target_field, template, group_field, source)
    prompt_fields = wanted["prompt_field/template"]
    if on_bad_rows == "error":
        # before the columns: a file whose every record is bad has no columns to check
        handle_bad_rows(table.bad, len(table.positions) + len(table.bad), source, on_bad_rows)
    _check_columns(table, wanted, source)
    fields = list(dict.fromkeys([target_field, *prompt_fields, *wanted.get("group_field", [])]))
    text_fields = [target_field, *prompt_fields]
    columns = _text_columns(table, fields, text_fields, source)
    bad, kept = _nested_values(table, columns, fields)
    handle_bad_rows([*table.bad, *bad], len(table.positions) + len(table.bad), source, on_bad_rows)
    rows_kept = _without_empty(table, columns, kept, text_fields, source)
    examples = [
        _example(columns, i, prompt_field, target_field, template, group_field, prompt_fields)
        for i in rows_kept
    ]
    return Loaded(examples, skipped=[*table.bad, *bad])


def _nested_values(
    table: FileRows, columns: dict[str, list[str | None]], fields: list[str]
) -> tuple[list[BadRow], list[int]]:
    """Rows with a list or object in a mapped field (bad rows), and the indices of the rest."""
    bad, kept = [], []
    for i, position in enumerate(table.positions):
        nested = [name for name in fields if columns[name][i] is None]
        if not nested:
            kept.append(i)
            continue
        kinds = "; ".join(
            f"field {n!r} holds {type_name(table.columns[n][i])} "
            f"({json.dumps(table.columns[n][i], default=str)[:40]}), not text"
            for n in nested
        )
        bad.append(BadRow(position, kinds))
    return bad, kept


def examples_for(rows: dict[str, list[Any]] | FileRows, spec: DataSpec, source: str) -> Loaded:
    """:func:`examples_from_rows` with the field mapping and bad-row policy of ``spec``."""
    return examples_from_rows(
        rows,
        prompt_field=spec.prompt_field,
        target_field=spec.target_field,
        template=spec.template,
        group_field=spec.group_field,
        source=source,
        on_bad_rows=spec.on_bad_rows,
    )
