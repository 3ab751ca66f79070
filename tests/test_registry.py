"""Promotion gate (pure policy) and registry tag helpers."""

import math

import pytest

from tasks.registry import (
    Contender,
    decide_promotion,
    intervals_overlap,
    version_description,
    version_tags,
)
from tasks.tracking import tags as T


def contender(version, loss, low=math.nan, high=math.nan, task="wordnet", rolled_back=False):
    return Contender(
        version=version,
        task_key=task,
        predicted_loss=loss,
        interval_low=low,
        interval_high=high,
        rolled_back=rolled_back,
    )


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "promote", "reason_part"),
    [
        (contender("2", 2.0), None, 0.05, True, "no champion"),
        (contender("2", 1.90), contender("1", 2.0), 0.05, True, "promoted"),
        (contender("2", 1.96), contender("1", 2.0), 0.05, False, "not better by the margin"),
        # Exactly at the threshold is not strictly better: no promotion.
        (contender("2", 1.95), contender("1", 2.0), 0.05, False, "not better by the margin"),
        (contender("2", 2.10), contender("1", 2.0), 0.0, False, "not better"),
        (contender("2", 1.99), contender("1", 2.0), 0.0, True, "promoted"),
        (contender("2", math.nan), None, 0.0, False, "no finite predicted loss"),
        (contender("2", math.inf), contender("1", 2.0), 0.0, False, "no finite"),
        (contender("2", 1.0, task="manpages"), contender("1", 2.0), 0.0, False, "per task"),
        (contender("2", 1.0), contender("1", math.nan), 0.0, True, "replaced"),
        (contender("1", 1.0), contender("1", 1.0), 0.0, False, "already the champion"),
        (contender("2", 1.0, rolled_back=True), contender("1", 2.0), 0.0, False, "rolled back"),
    ],
)
def test_gate_rules(challenger, champion, margin, promote, reason_part):
    decision = decide_promotion(challenger, champion, margin=margin)
    assert decision.promote is promote
    assert reason_part in decision.reason
    assert decision.challenger_version == challenger.version


@pytest.mark.parametrize(
    ("challenger", "champion", "require_disjoint", "promote", "overlap"),
    [
        # Better by the margin, intervals overlap: promoted by default, blocked when strict.
        (contender("2", 1.9, 1.8, 2.05), contender("1", 2.0, 1.95, 2.1), False, True, True),
        (contender("2", 1.9, 1.8, 2.05), contender("1", 2.0, 1.95, 2.1), True, False, True),
        # Disjoint intervals: promoted either way.
        (contender("2", 1.5, 1.4, 1.6), contender("1", 2.0, 1.9, 2.1), True, True, False),
        # Unknown intervals with the strict rule: not clearly better.
        (contender("2", 1.5), contender("1", 2.0), True, False, None),
    ],
)
def test_gate_interval_rule(challenger, champion, require_disjoint, promote, overlap):
    decision = decide_promotion(
        challenger, champion, margin=0.01, require_disjoint_intervals=require_disjoint
    )
    assert decision.promote is promote
    assert decision.intervals_overlap is overlap
    assert ("overlap" in decision.reason) is bool(overlap)


def test_intervals_overlap_symmetric():
    a, b = contender("1", 1.0, 0.9, 1.1), contender("2", 1.2, 1.05, 1.3)
    assert intervals_overlap(a, b) is True and intervals_overlap(b, a) is True
    assert intervals_overlap(a, contender("3", 2.0, 1.9, 2.1)) is False


@pytest.mark.parametrize("margin", [-0.1, math.nan, math.inf])
def test_gate_rejects_bad_margin(margin):
    with pytest.raises(ValueError, match="margin must be"):
        decide_promotion(contender("2", 1.0), None, margin=margin)


def test_contender_rejects_reversed_interval():
    with pytest.raises(ValueError, match="interval low"):
        contender("1", 1.0, 1.2, 1.1)


def test_version_tags_and_description():
    tags = version_tags(
        task_key="wordnet",
        selection_key="sel-1",
        predicted_loss=2.25,
        interval=[2.1, 2.4],
        selector="ats",
        extra={T.GIT_COMMIT: "abc123", T.CONFIG_HASH: "cfg9"},
    )
    assert tags[T.PREDICTED_LOSS] == "2.25"
    assert tags[T.INTERVAL_LOW] == "2.1" and tags[T.INTERVAL_HIGH] == "2.4"
    assert tags[T.SELECTION_KEY] == "sel-1" and tags[T.SELECTOR] == "ats"
    # the task key is one tag, "lensllm.task", on runs and versions alike
    assert tags[T.TASK] == tags["lensllm.task"] == "wordnet"
    assert "lensllm.task_key" not in tags
    assert tags[T.GIT_COMMIT] == "abc123" and tags[T.CONFIG_HASH] == "cfg9"
    text = version_description(tags)
    assert "ats" in text and "2.2500" in text and "abc123" in text and "cfg9" in text
    assert "'wordnet'" in text and "sel-1" in text
    with pytest.raises(ValueError, match=r"\[low, high\]"):
        version_tags(
            task_key="t", selection_key="s", predicted_loss=1, interval=[2, 1], selector="x"
        )
    with pytest.raises(ValueError, match="interval must be"):
        version_tags(task_key="t", selection_key="s", predicted_loss=1, interval=[1], selector="x")
