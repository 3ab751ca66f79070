"""Registry policy: the promotion gate that decides whether a challenger becomes champion.

Pure policy on plain values: no MLflow here (``tasks/tracking/model_registry.py`` reads the
registry, measures the champion when needed, calls :func:`decide_promotion` and moves the
aliases).

The rule
--------
Champion and challenger are compared on *measured* loss, on the same test examples: the current
selection's test split (same examples, same loss definition, same fingerprint). Predicted
losses are recorded with the decision as information, not as the rule.

1. A version that was rolled back from champion is never re-promoted automatically (a re-run
   of its selection must not undo the rollback).
2. A challenger without a finite measured loss is never promoted.
3. With no champion, the challenger is promoted.
4. A challenger for a different task key than the champion is never promoted: champions are
   compared per task, so register one model name per task key.
5. Otherwise the challenger is promoted when its measured loss is lower by more than
   ``margin`` *and* a paired bootstrap over the test examples gives
   ``P(challenger better) >= min_confidence``. Without a measurement of both on shared data
   there is no promotion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tasks.records.schema import NO_INTERVAL
from tasks.tracking import tags as T


@dataclass(frozen=True)
class Contender:
    """One registered model version as the gate sees it.

    ``interval_low`` / ``interval_high`` bound the predicted loss (NaN when unknown).
    """

    version: str
    task_key: str
    predicted_loss: float = math.nan
    interval_low: float = math.nan
    interval_high: float = math.nan
    rolled_back: bool = False

    def __post_init__(self) -> None:
        low, high = self.interval_low, self.interval_high
        if math.isfinite(low) and math.isfinite(high) and low > high:
            raise ValueError(
                f"version {self.version}: interval low {low} is above interval high {high}; "
                "pass the interval as [low, high]"
            )


@dataclass(frozen=True)
class MeasuredComparison:
    """Challenger and champion measured on the same test examples (paired bootstrap,
    ``lens_model.compare.paired_bootstrap``)."""

    test_fingerprint: str
    rank_on: str
    challenger_loss: float
    champion_loss: float
    p_better: float
    difference_low: float
    difference_high: float
    n_examples: int


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of the promotion gate; ``reason`` is a sentence a reviewer can read."""

    promote: bool
    reason: str
    challenger_version: str
    champion_version: str | None
    margin: float
    min_confidence: float
    challenger_measured_loss: float
    champion_measured_loss: float | None
    p_better: float | None
    test_fingerprint: str | None
    challenger_predicted_loss: float
    champion_predicted_loss: float | None


def decide_promotion(
    challenger: Contender,
    champion: Contender | None,
    *,
    challenger_loss: float,
    comparison: MeasuredComparison | None,
    margin: float,
    min_confidence: float = 0.9,
) -> PromotionDecision:
    """Apply the promotion rule (module docstring).

    ``challenger_loss`` is the challenger's measured loss on the current test split;
    ``comparison`` pairs it with the champion's on the same examples (None when there is no
    champion, or it could not be measured).

    Raises
    ------
    ValueError
        If ``margin`` is negative or not finite, or ``min_confidence`` is outside [0, 1].
    """
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
    verdict = _precondition(challenger, champion, challenger_loss, comparison)
    if verdict is None:
        verdict = _measured_verdict(challenger, champion, comparison, margin, min_confidence)
    promote, reason = verdict
    return PromotionDecision(
        promote=promote,
        reason=reason,
        challenger_version=challenger.version,
        champion_version=champion.version if champion else None,
        margin=margin,
        min_confidence=min_confidence,
        challenger_measured_loss=challenger_loss,
        champion_measured_loss=comparison.champion_loss if comparison else None,
        p_better=comparison.p_better if comparison else None,
        test_fingerprint=comparison.test_fingerprint if comparison else None,
        challenger_predicted_loss=challenger.predicted_loss,
        champion_predicted_loss=champion.predicted_loss if champion else None,
    )


def _precondition(
    challenger: Contender,
    champion: Contender | None,
    challenger_loss: float,
    comparison: MeasuredComparison | None,
) -> tuple[bool, str] | None:
    """The verdict when no measured comparison can decide (rolled back, nothing measured, no
    or the same champion, another task), else None."""
    new = f"v{challenger.version}"
    if challenger.rolled_back:
        return (
            False,
            f"{new} was rolled back from champion; it is not re-promoted automatically (set "
            "the alias by hand to override)",
        )
    if not math.isfinite(challenger_loss):
        return False, f"{new} has no finite measured loss on the test split"
    if champion is None:
        return True, f"no champion yet: {new} becomes champion (measured {challenger_loss:.4g})"
    if champion.version == challenger.version:
        return False, f"{new} is already the champion"
    if champion.task_key != challenger.task_key:
        return (
            False,
            f"champion v{champion.version} is for task {champion.task_key!r}, challenger for "
            f"{challenger.task_key!r}: champions are compared per task; register one model "
            "name per task key",
        )
    if comparison is None:
        return (
            False,
            f"champion v{champion.version} could not be measured on the current test split: "
            "no promotion without a comparison on shared data",
        )
    return None


def _measured_verdict(
    challenger: Contender,
    champion: Contender,
    c: MeasuredComparison,
    margin: float,
    min_confidence: float,
) -> tuple[bool, str]:
    """Promote when the measured loss is lower by more than ``margin`` with confidence."""
    compare = (
        f"v{challenger.version} measured {c.challenger_loss:.4g} vs champion "
        f"v{champion.version} {c.champion_loss:.4g} {c.rank_on} on the same {c.n_examples} "
        f"test examples (split {c.test_fingerprint}); difference "
        f"{c.challenger_loss - c.champion_loss:+.4g} [{c.difference_low:+.4g}, "
        f"{c.difference_high:+.4g}], P(challenger better) {c.p_better:.2f}; margin {margin:g}, "
        f"required confidence {min_confidence:g}{_predicted(challenger, champion)}"
    )
    if not c.challenger_loss < c.champion_loss - margin:
        return False, f"not better by the margin: {compare}"
    if c.p_better < min_confidence:
        return False, f"better, but not confidently: {compare}"
    return True, f"promoted: {compare}"


def _predicted(challenger: Contender, champion: Contender) -> str:
    if math.isfinite(challenger.predicted_loss) and math.isfinite(champion.predicted_loss):
        return (
            f" (predicted {challenger.predicted_loss:.4g} vs {champion.predicted_loss:.4g}, "
            "for information)"
        )
    return ""


def version_tags(
    *,
    task_key: str,
    selection_key: str,
    predicted_loss: float,
    interval: list[float],
    selector: str,
    extra: dict | None = None,
) -> dict[str, str]:
    """Tags of a registered version (``lensllm.*`` keys; ``extra`` carries git commit, config
    hash and data fingerprint). The promotion gate reads them back."""
    if len(interval) != 2:
        raise ValueError(f"interval must be [low, high], got {interval!r}")
    low, high = (float(x) for x in interval)
    if low > high:
        raise ValueError(f"interval low {low} is above high {high}; pass [low, high]")
    if not task_key or not selection_key:
        raise ValueError("task_key and selection_key must be non-empty strings")
    tags = {str(k): str(v) for k, v in (extra or {}).items()}
    tags.update(
        {
            T.TASK: task_key,
            T.SELECTION_KEY: selection_key,
            T.PREDICTED_LOSS: repr(float(predicted_loss)),
            T.INTERVAL_LOW: repr(low),
            T.INTERVAL_HIGH: repr(high),
            T.SELECTOR: selector,
        }
    )
    return tags


def version_description(tags: dict[str, str]) -> str:
    """A readable description of a registered version from its tags."""
    pred = float(tags[T.PREDICTED_LOSS])
    low, high = float(tags[T.INTERVAL_LOW]), float(tags[T.INTERVAL_HIGH])
    interval = (
        f"{_level(tags)} interval {low:.4f} .. {high:.4f}{_p_best(tags)}"
        if math.isfinite(low) and math.isfinite(high)
        else NO_INTERVAL
    )
    lines = [
        f"Selected by {tags[T.SELECTOR]} for task {tags[T.TASK]!r}.",
        f"Predicted target loss {pred:.4f} ({interval}).",
        f"Selection key: {tags[T.SELECTION_KEY]}.",
    ]
    provenance = [
        f"{label} {tags[key]}"
        for key, label in (
            (T.GIT_COMMIT, "git commit"),
            (T.CONFIG_HASH, "config hash"),
            (T.DATA_FINGERPRINT, "data fingerprint"),
        )
        if tags.get(key)
    ]
    if provenance:
        lines.append("Provenance: " + ", ".join(provenance) + ".")
    return " ".join(lines)


def _level(tags: dict[str, str]) -> str:
    try:
        return f"{float(tags[T.INTERVAL_LEVEL]):.0%} {tags.get(T.INTERVAL_METHOD, '')}".rstrip()
    except (KeyError, ValueError):
        return "heuristic"


def _p_best(tags: dict[str, str]) -> str:
    try:
        return f"; P(best) {float(tags[T.P_BEST]):.2f}"
    except (KeyError, ValueError):
        return ""
