"""Data sets on the Hugging Face hub, by id (``org/name``), loaded with
``datasets.load_dataset`` (needs hub access; offline machines use a local file or a built-in
source) and mapped to examples like a local file."""

from __future__ import annotations

from pathlib import Path

from tasks.data.sources.rows import Loaded, examples_for
from tasks.records.errors import DataError, DataSourceUnavailableError
from tasks.records.schema import DataSpec, Example

NAME = "hub"


def load_columns(spec: DataSpec, *, split: str = "train", builtins: tuple[str, ...] = ()) -> dict:
    """The columns of the hub data set's ``split``."""
    import datasets  # slow import, only needed for file and hub sources

    if spec.path is not None:
        raise DataError(
            f"path={spec.path!r} only applies to built-in sources and file formats; for the hub "
            f"data set {spec.source!r} leave it unset"
        )
    try:
        dataset = datasets.load_dataset(spec.source, split=split)
    except (OSError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataSourceUnavailableError(
            f"could not load {spec.source!r} from the Hugging Face hub: the hub is offline or "
            f"unreachable, or the id is wrong ({err}). Use a local file (.json/.jsonl/.csv/"
            f".parquet/.txt) or a built-in source ({', '.join(builtins)})"
        ) from err
    return dataset.to_dict()


def read(spec: DataSpec, *, builtins: tuple[str, ...] = ()) -> Loaded:
    """The examples of a hub data set, mapped with the spec's fields, and the bad rows skipped."""
    return examples_for(load_columns(spec, builtins=builtins), spec, spec.source)


def load(spec: DataSpec, *, builtins: tuple[str, ...] = ()) -> list[Example]:
    """The examples of a hub data set, mapped with the spec's fields."""
    return read(spec, builtins=builtins).examples


def files(spec: DataSpec) -> list[Path]:
    """None: a hub data set's revision is the hub's business."""
    return []
