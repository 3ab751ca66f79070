"""Load, split and subsample a task data set for probing (a cached Prefect task)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy

from tasks.data.sources import read_examples, source_files
from tasks.data.sources.rows import Loaded
from tasks.data.splits import (
    check_int,
    count_distinct,
    describe_counts,
    fingerprint,
    limit_examples,
    nested_subsets,
    short_hash,
    split_examples,
)
from tasks.records.errors import DataError
from tasks.records.schema import DataSpec, Ladder, PreparedData
from tasks.runtime.cache import code_keyed


def prepare_data(spec: DataSpec, ladder: Ladder, target_size: int | None = None) -> PreparedData:
    """Load ``spec``'s examples, split them by group, and shuffle the train split once.

    Validates everything before returning: enough examples for ``val_size + test_size +
    budget`` (after ``max_examples``), a train split that holds the budget. The returned
    ``train`` is the first ``max(budget, min(target_size, train split))`` examples of the
    shuffled train split: what the probes and the training at the target draw from; the subset
    of size ``s`` is ``train[:s]`` (:meth:`PreparedData.for_probe`), so every subset is nested
    in every larger one, the target's included.
    """
    sizes, budget = ladder.sizes(), ladder.budget
    check_int("val_size", spec.val_size, 1)
    check_int("test_size", spec.test_size, 1)
    needed = spec.val_size + spec.test_size + budget
    if spec.max_examples is not None and spec.max_examples < needed:
        raise DataError(
            f"max_examples={spec.max_examples} is below val_size + test_size + budget = "
            f"{needed}; raise max_examples or lower the others"
        )
    loaded = _read_logged(spec)
    examples = loaded.examples
    if spec.max_examples is not None:
        examples = limit_examples(examples, spec.max_examples, spec.seed)
    counts = count_distinct(examples)
    if len(examples) < needed:
        raise DataError(
            f"data set {spec.source!r} has {_counted(counts)} but val_size="
            f"{spec.val_size} + test_size={spec.test_size} + budget={budget} needs {needed}; "
            "lower budget or val_size/test_size, or use a larger data set"
        )
    splits = split_examples(
        examples, val_size=spec.val_size, test_size=spec.test_size, seed=spec.seed
    )
    _check_split_sizes(splits, spec, budget, counts)
    pool = budget if target_size is None else max(budget, min(target_size, len(splits["train"])))
    train = nested_subsets(splits["train"], [*sizes, pool], seed=spec.seed)[pool]
    return PreparedData(
        source=spec.source if spec.path is None else f"{spec.source}:{spec.path}",
        train=train,
        val=splits["val"],
        test=splits["test"],
        sizes=sizes,
        fingerprint=fingerprint([*train, *splits["val"], *splits["test"]]),
        subset_fingerprints={size: fingerprint(train[:size]) for size in sizes},
        val_fingerprint=fingerprint(splits["val"]),
        test_fingerprint=fingerprint(splits["test"]),
        n_available=len(examples),
        n_train_available=len(splits["train"]),
        target_size=target_size,
        n_distinct=counts["distinct"],
        n_groups=counts["groups"],
        skipped_rows=loaded.skipped_summary(),
    )


def _read_logged(spec: DataSpec) -> Loaded:
    """The source's examples; what it warns about (empty rows dropped, bad rows skipped, numbers
    read as text) goes to the run log as one WARNING line each, with the Prefect run's logs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = read_examples(spec)
    logger = _logger()
    for warning in caught:
        logger.warning("%s", warning.message)
    return loaded


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run logger inside a task run (shown in the UI), else the module logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _counted(counts: dict[str, int]) -> str:
    """The example count, with distinct examples and groups when they tell more."""
    if counts["duplicates"] or counts["groups"] < counts["examples"]:
        return describe_counts(counts)
    return f"{counts['examples']} examples"


def _check_split_sizes(
    splits: dict[str, list], spec: DataSpec, budget: int, counts: dict[str, int]
) -> None:
    """Every split holds what it needs. Splits take whole groups (a group never spans two),
    so duplicates and large groups leave splits short even when the count looks enough."""
    wanted = {"test": spec.test_size, "val": spec.val_size, "train": budget}
    short = {name: need for name, need in wanted.items() if len(splits[name]) < need}
    if not short:
        return
    gets = ", ".join(f"{name} {len(splits[name])} of {need}" for name, need in short.items())
    raise DataError(
        f"data set {spec.source!r} has {describe_counts(counts)}; a group never spans two "
        f"splits (identical prompts form one group unless group_field is set), so the splits "
        f"get too few examples ({gets}, train's need being the ladder budget): add distinct "
        f"examples or remove duplicates (val_size + test_size + budget = "
        f"{sum(wanted.values())} in groups that can be split), or lower budget/val_size/test_size"
    )


class SourceFilesStamp(CachePolicy):
    """Cache-key part that changes when the files behind a local or built-in source change.

    ``INPUTS`` sees only the path string; this adds the size and modification time of the data
    files, so an edited file or an upgraded Debian package invalidates the cache. Hub ids
    contribute nothing (their revision is the hub's business).
    """

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        stamps = []
        for file in source_files(inputs["spec"]):
            try:
                stat = file.stat()
            except OSError:
                continue
            stamps.append(f"{file}:{stat.st_size}:{stat.st_mtime_ns}")
        return short_hash("\n".join(stamps)) if stamps else None


prepare_data_task = task(name="prepare-data", persist_result=True)(prepare_data)
prepare_data_task = prepare_data_task.with_options(
    cache_policy=code_keyed(prepare_data, extra=SourceFilesStamp())
)
