"""Load, split and subsample a task data set for probing (a cached Prefect task)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy

from tasks.data.sources import load_examples, source_files
from tasks.data.splits import (
    check_int,
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
    examples = load_examples(spec)
    if spec.max_examples is not None:
        examples = limit_examples(examples, spec.max_examples, spec.seed)
    if len(examples) < needed:
        raise DataError(
            f"data set {spec.source!r} has {len(examples)} examples but val_size="
            f"{spec.val_size} + test_size={spec.test_size} + budget={budget} needs {needed}; "
            "lower budget or val_size/test_size, or use a larger data set"
        )
    splits = split_examples(
        examples, val_size=spec.val_size, test_size=spec.test_size, seed=spec.seed
    )
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
