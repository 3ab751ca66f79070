"""Splits, nested subsets and fingerprints: the part of the data layer every source shares.

The test split is drawn first (it depends only on the examples, ``test_size`` and ``seed``),
then the validation split, by whole groups. The train split is shuffled once; every ladder size
is a prefix of that one order, so subsets are nested and shared by all candidates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from tasks.records.errors import DataError
from tasks.records.schema import Example, fingerprint

__all__ = [
    "check_int",
    "count_distinct",
    "fingerprint",
    "limit_examples",
    "nested_subsets",
    "short_hash",
    "split_examples",
]


def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}; got {value!r}")


def count_distinct(examples: Sequence[Example]) -> dict[str, int]:
    """``examples``, ``distinct`` (prompt, target) pairs, ``duplicates`` (the rest) and
    ``groups``: what decides how a data set can be split."""
    distinct = len({(ex["prompt"], ex["target"]) for ex in examples})
    return {
        "examples": len(examples),
        "distinct": distinct,
        "duplicates": len(examples) - distinct,
        "groups": len({ex["group"] for ex in examples}),
    }


def describe_counts(counts: dict[str, int]) -> str:
    """``"300 examples, 1 distinct (299 duplicates), in 1 group"``."""
    dupes = f" ({counts['duplicates']} duplicates)" if counts["duplicates"] else ""
    groups = f"{counts['groups']} group{'s' if counts['groups'] != 1 else ''}"
    return f"{counts['examples']} examples, {counts['distinct']} distinct{dupes}, in {groups}"


def _take_groups(
    order: Sequence[str], count: int, index: dict[str, list[int]]
) -> tuple[list[int], int]:
    """Indices of whole groups in ``order`` until ``count`` examples; returns (indices, n_used)."""
    taken: list[int] = []
    used = 0
    while len(taken) < count and used < len(order):
        taken.extend(index[order[used]])
        used += 1
    # The boundary group's extra members are dropped, never moved to another split.
    return taken[:count], used


def split_examples(
    examples: Sequence[Example], *, val_size: int, test_size: int, seed: int
) -> dict[str, list[Example]]:
    """Split examples into train/val/test by whole groups, deterministically.

    The groups are shuffled once with ``seed``; the test split takes the first groups, then
    the validation split, the rest is train. The test split therefore depends only on the
    examples, ``test_size`` and ``seed``. Surplus members of the group at a split boundary are
    dropped so that no group appears in two splits; train keeps the input order.
    """
    check_int("val_size", val_size, 1)
    check_int("test_size", test_size, 1)
    index: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        index.setdefault(example["group"], []).append(i)
    groups = list(index)
    if val_size + test_size >= len(examples):
        raise DataError(
            f"val_size={val_size} + test_size={test_size} leaves no training examples out of "
            f"{len(examples)}; lower them or use a larger data set"
        )
    order = [groups[i] for i in np.random.default_rng([seed, 0]).permutation(len(groups))]
    test_idx, used_test = _take_groups(order, test_size, index)
    val_idx, used_val = _take_groups(order[used_test:], val_size, index)
    held_out = set(order[: used_test + used_val])
    train = [ex for ex in examples if ex["group"] not in held_out]
    return {
        "train": train,
        "val": [examples[i] for i in val_idx],
        "test": [examples[i] for i in test_idx],
    }


def nested_subsets(
    train: Sequence[Example], sizes: Sequence[int], *, seed: int
) -> dict[int, list[Example]]:
    """Nested training subsets: prefixes of one seeded shuffle of ``train``, one per size."""
    if not sizes:
        return {}
    largest = max(sizes)
    if len(train) < largest:
        raise DataError(
            f"the train split has {len(train)} examples but the ladder needs {largest} "
            f"(budget); lower budget to at most {len(train)} (first_size * 2**k) or use a "
            "larger data set (or a larger max_examples, or smaller val_size/test_size)"
        )
    order = np.random.default_rng([seed, 1]).permutation(len(train))[:largest]
    shuffled = [train[i] for i in order]
    return {int(size): shuffled[:size] for size in sizes}


def limit_examples(examples: list[Example], max_examples: int, seed: int) -> list[Example]:
    """A seeded sample of whole groups holding ``max_examples`` examples (input order kept)."""
    if len(examples) <= max_examples:
        return examples
    index: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        index.setdefault(example["group"], []).append(i)
    groups = list(index)
    order = [groups[i] for i in np.random.default_rng([seed, 2]).permutation(len(groups))]
    kept, _ = _take_groups(order, max_examples, index)
    return [examples[i] for i in sorted(kept)]


def short_hash(text: str) -> str:
    """16 hex digits of sha256 (group ids of rows without a group field, cache stamps)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
