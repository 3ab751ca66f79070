"""Registry policy: the promotion gate that decides whether a challenger becomes champion.

Pure policy on plain values: no MLflow here (``tasks/tracking/registry.py`` reads the
registry, calls :func:`decide_promotion` and moves the aliases).

The rule
--------
Both models are scored by their *predicted* target loss (lower is better) for the same task.

1. A challenger whose predicted loss is not finite (a failed fit) is never promoted.
2. A challenger for a different task key than the champion is never promoted: champions are
   compared per task, so register one model name per task key.
3. A version that was rolled back from champion is never re-promoted automatically (a re-run
   of its selection must not undo the rollback).
4. With no champion (or a champion without a finite predicted loss), the challenger is promoted.
5. Otherwise the challenger is promoted when
   ``challenger_pred < champion_pred - margin``.
6. Uncertainty: the decision records whether the two prediction intervals overlap. By default
   an overlap is reported in the reason but does not block the promotion (the margin is the
   gate); with ``require_disjoint_intervals=True`` the challenger must also be *clearly*
   better: its interval's upper end must lie below the champion's interval's lower end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tasks.tracking import tags as T


@dataclass(frozen=True)
class Contender:
    """One registered model version as the gate sees it.

    ``interval_low`` / ``interval_high`` bound the predicted loss (NaN when unknown).
    """

    version: str
    task_key: str
    predicted_loss: float
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

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.interval_low) and math.isfinite(self.interval_high)


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of the promotion gate; ``reason`` is a sentence a reviewer can read."""

    promote: bool
    reason: str
    challenger_version: str
    champion_version: str | None
    challenger_predicted_loss: float
    champion_predicted_loss: float | None
    margin: float
    intervals_overlap: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def intervals_overlap(a: Contender, b: Contender) -> bool | None:
    """Whether the two prediction intervals overlap (None when either is unknown)."""
    if not (a.has_interval and b.has_interval):
        return None
    return a.interval_low <= b.interval_high and b.interval_low <= a.interval_high


def decide_promotion(
    challenger: Contender,
    champion: Contender | None,
    *,
    margin: float,
    require_disjoint_intervals: bool = False,
) -> PromotionDecision:
    """Apply the promotion rule (module docstring) to a challenger and the current champion.

    Raises
    ------
    ValueError
        If ``margin`` is negative or not finite.
    """
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")

    def decision(promote: bool, reason: str, overlap: bool | None = None) -> PromotionDecision:
        return PromotionDecision(
            promote=promote,
            reason=reason,
            challenger_version=challenger.version,
            champion_version=champion.version if champion else None,
            challenger_predicted_loss=challenger.predicted_loss,
            champion_predicted_loss=champion.predicted_loss if champion else None,
            margin=margin,
            intervals_overlap=overlap,
        )

    pred = challenger.predicted_loss
    if not math.isfinite(pred):
        return decision(False, f"challenger v{challenger.version} has no finite predicted loss")
    if challenger.rolled_back:
        return decision(
            False,
            f"v{challenger.version} was rolled back from champion; it is not re-promoted "
            "automatically (set the alias by hand to override)",
        )
    if champion is None:
        return decision(True, f"no champion yet: v{challenger.version} becomes champion")
    if champion.version == challenger.version:
        return decision(False, f"v{challenger.version} is already the champion")
    if champion.task_key != challenger.task_key:
        return decision(
            False,
            f"champion v{champion.version} is for task {champion.task_key!r}, challenger for "
            f"{challenger.task_key!r}: champions are compared per task; register one model "
            "name per task key",
        )
    if not math.isfinite(champion.predicted_loss):
        return decision(
            True, f"champion v{champion.version} has no finite predicted loss: replaced"
        )

    overlap = intervals_overlap(challenger, champion)
    overlap_text = {None: "intervals unknown", True: "intervals overlap", False: "disjoint"}
    threshold = champion.predicted_loss - margin
    compare = (
        f"challenger v{challenger.version} predicted {pred:.4g} vs champion "
        f"v{champion.version} {champion.predicted_loss:.4g} - margin {margin:g} = "
        f"{threshold:.4g} ({overlap_text[overlap]})"
    )
    if not pred < threshold:
        return decision(False, f"not better by the margin: {compare}", overlap)
    if require_disjoint_intervals:
        clearly_better = overlap is not None and challenger.interval_high < champion.interval_low
        if not clearly_better:
            return decision(
                False,
                f"better by the margin but not clearly (intervals must be disjoint): {compare}",
                overlap,
            )
    return decision(True, f"promoted: {compare}", overlap)


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
    lines = [
        f"Selected by {tags[T.SELECTOR]} for task {tags[T.TASK]!r}.",
        f"Predicted target loss {pred:.4f} ({_level(tags)} interval {low:.4f} .. {high:.4f}"
        f"{_p_best(tags)}).",
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
