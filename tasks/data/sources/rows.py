"""Field mapping of tabular sources (local files, hub data sets): columns -> examples."""

from __future__ import annotations

import math
import string
import warnings
from typing import Any

from tasks.data.splits import short_hash
from tasks.records.errors import DataError
from tasks.records.schema import DataSpec, Example

# Empty rows are dropped with a warning up to this fraction; above it the data set is rejected.
MAX_EMPTY_FRACTION = 0.05


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


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


def examples_from_rows(
    rows: dict[str, list[Any]],
    *,
    prompt_field: str | None = None,
    target_field: str | None = None,
    template: str | None = None,
    group_field: str | None = None,
    source: str = "data set",
) -> list[Example]:
    """Map columns of a table to prompt/target examples.

    Parameters
    ----------
    rows : dict of str to list
        Column name -> values (``Dataset.to_dict()`` or any column mapping).
    prompt_field, template : str, optional
        Exactly one: the column holding the prompt, or a format string whose ``{field}``
        placeholders are filled from each row (``""`` gives an empty prompt: language modelling).
    target_field : str
        The column holding the target text (the loss is measured on it).
    group_field : str, optional
        Column whose equal values must stay in one split; by default rows with identical prompts
        form a group.
    source : str
        Name of the data source, used in error messages.

    Raises
    ------
    DataError
        (a ``ValueError``) When a field is missing, or when more than 5 % of rows have an
        empty prompt or target (fewer are dropped with a warning).
    """
    if target_field is None:
        raise DataError(f"{source}: set target_field to the column holding the target text")
    if (prompt_field is None) == (template is None):
        raise DataError(
            f"{source}: set exactly one of prompt_field (a column) or template (a format string "
            f"with {{field}} placeholders); got prompt_field={prompt_field!r}, "
            f"template={template!r}"
        )
    n_rows = len(next(iter(rows.values()), []))
    prompt_fields = [prompt_field] if prompt_field is not None else _template_fields(template)
    wanted = {"target_field": [target_field], "prompt_field/template": prompt_fields}
    if group_field is not None:
        wanted["group_field"] = [group_field]
    for role, fields in wanted.items():
        for field in fields:
            if field not in rows:
                raise DataError(
                    f"{source}: {role} {field!r} is not a column (missing in all {n_rows} rows); "
                    f"available columns: {sorted(rows)}"
                )
    columns = {f: [_as_text(v) for v in rows[f]] for f in {target_field, *prompt_fields}}
    empty = [False] * n_rows
    for field, values in columns.items():
        n_empty = sum(not value.strip() for value in values)
        if n_empty and n_empty > MAX_EMPTY_FRACTION * n_rows:
            raise DataError(
                f"{source}: field {field!r} is missing or empty in {n_empty} of {n_rows} rows "
                f"(more than {MAX_EMPTY_FRACTION:.0%}); fix the data or map another field"
            )
        empty = [e or not value.strip() for e, value in zip(empty, values, strict=True)]
    if any(empty):
        warnings.warn(
            f"{source}: dropping {sum(empty)} of {n_rows} rows with an empty prompt or target "
            f"field",
            stacklevel=2,
        )
    examples = []
    groups = [_as_text(v) for v in rows[group_field]] if group_field is not None else None
    for i in range(n_rows):
        if empty[i]:
            continue
        if template is not None:
            prompt = template.format_map({f: columns[f][i] for f in prompt_fields})
        else:
            prompt = columns[prompt_field][i]
        group = groups[i] if groups is not None else short_hash(prompt)
        examples.append({"prompt": prompt, "target": columns[target_field][i], "group": group})
    return examples


def examples_for(rows: dict[str, list[Any]], spec: DataSpec, source: str) -> list[Example]:
    """:func:`examples_from_rows` with the field mapping of ``spec``."""
    return examples_from_rows(
        rows,
        prompt_field=spec.prompt_field,
        target_field=spec.target_field,
        template=spec.template,
        group_field=spec.group_field,
        source=source,
    )
