"""Promotion gate (pure policy) and registry tag helpers."""

import math

import pytest

from tasks.promotion.policy import (
    Contender,
    MeasuredComparison,
    decide_promotion,
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


def measured(challenger, champion, p_better, *, n=64, fp="split-1"):
    """A paired comparison of measured losses on one test split."""
    diff = challenger - champion
    return MeasuredComparison(
        test_fingerprint=fp,
        rank_on="bits_per_byte",
        challenger_loss=challenger,
        champion_loss=champion,
        p_better=p_better,
        difference_low=diff - 0.05,
        difference_high=diff + 0.05,
        n_examples=n,
    )


def gate(challenger, champion, loss, comparison, margin=0.0, min_confidence=0.9):
    return decide_promotion(
        challenger,
        champion,
        challenger_loss=loss,
        comparison=comparison,
        margin=margin,
        min_confidence=min_confidence,
    )


@pytest.mark.parametrize(
    ("challenger", "champion", "loss", "comparison", "margin", "promote", "reason_part"),
    [
        (contender("2", 2.0), None, 1.9, None, 0.05, True, "no champion"),
        (contender("2", 2.0), contender("1", 2.0), 1.80, measured(1.80, 2.0, 0.99), 0.05, True,
         "promoted"),
        (contender("2", 2.0), contender("1", 2.0), 1.97, measured(1.97, 2.0, 0.95), 0.05, False,
         "not better by the margin"),
        # exactly at the threshold is not strictly better
        (contender("2", 2.0), contender("1", 2.0), 1.95, measured(1.95, 2.0, 0.99), 0.05, False,
         "not better by the margin"),
        # better, but the bootstrap is not confident enough
        (contender("2", 2.0), contender("1", 2.0), 1.99, measured(1.99, 2.0, 0.70), 0.0, False,
         "not confidently"),
        (contender("2", 2.0), contender("1", 2.0), 1.99, measured(1.99, 2.0, 0.93), 0.0, True,
         "promoted"),
        # the prediction says better, the measurement on shared data says worse: kept
        (contender("2", 1.0), contender("1", 2.0), 2.10, measured(2.10, 2.0, 0.02), 0.0, False,
         "not better"),
        (contender("2", 1.0), None, math.nan, None, 0.0, False, "no finite measured loss"),
        (contender("2", 1.0, task="manpages"), contender("1", 2.0), 1.0,
         measured(1.0, 2.0, 1.0), 0.0, False, "per task"),
        (contender("1", 1.0), contender("1", 1.0), 1.0, None, 0.0, False,
         "already the champion"),
        (contender("2", 1.0, rolled_back=True), contender("1", 2.0), 1.0,
         measured(1.0, 2.0, 1.0), 0.0, False, "rolled back"),
        # no measurement of the champion on the current split: no promotion
        (contender("2", 1.0), contender("1", 2.0), 1.0, None, 0.0, False, "shared data"),
    ],
)  # fmt: skip
def test_gate_rules(challenger, champion, loss, comparison, margin, promote, reason_part):
    decision = gate(challenger, champion, loss, comparison, margin=margin)
    assert decision.promote is promote
    assert reason_part in decision.reason
    assert decision.challenger_version == challenger.version


def test_decision_records_measured_and_predicted_losses():
    decision = gate(contender("2", 1.5), contender("1", 1.9), 1.8, measured(1.8, 2.0, 0.97))
    assert decision.promote
    assert decision.challenger_measured_loss == 1.8 and decision.champion_measured_loss == 2.0
    assert decision.p_better == 0.97 and decision.test_fingerprint == "split-1"
    # predictions are kept as information, not as the rule
    assert decision.challenger_predicted_loss == 1.5 and decision.champion_predicted_loss == 1.9
    assert "for information" in decision.reason and "split-1" in decision.reason


@pytest.mark.parametrize("margin", [-0.1, math.nan, math.inf])
def test_gate_rejects_bad_margin(margin):
    with pytest.raises(ValueError, match="margin must be"):
        gate(contender("2", 1.0), None, 1.0, None, margin=margin)


def test_gate_rejects_bad_confidence():
    with pytest.raises(ValueError, match="min_confidence"):
        gate(contender("2", 1.0), None, 1.0, None, min_confidence=1.5)


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
