"""The MLflow model registry: versions, aliases, the promotion gate applied, rollback.

The *policy* (who becomes champion) is :func:`tasks.promotion.policy.decide_promotion`, pure
code over frozen records; :class:`ModelRegistry` reads the registry, calls it and moves the aliases.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping

from lens_model.compare import paired_bootstrap
from tasks.promotion.policy import (
    Contender,
    MeasuredComparison,
    PromotionDecision,
    decide_promotion,
)
from tasks.records.errors import RegistryError
from tasks.records.schema import Measurement
from tasks.runtime.locks import held, lock_path
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker, quote, tag_filter
from tasks.tracking.secrets import filter_secrets

logger = logging.getLogger(__name__)

MODEL_DESCRIPTION = "LensLLM: fine-tuned model selected by scaling-law prediction"


def _float_tag(tags: Mapping[str, str], key: str) -> float:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return math.nan


class ModelRegistry:
    """One registered model (``name``) in the registry of ``tracker``."""

    def __init__(self, tracker: Tracker, name: str) -> None:
        if not name:
            raise ValueError("a registered model needs a non-empty name")
        self.tracker = tracker
        self.name = name

    @property
    def client(self):
        return self.tracker.client

    def find_version(self, tags: dict) -> str | None:
        """The newest version carrying all ``tags``, or None."""
        if not tags:
            raise ValueError("find_version needs at least one tag, e.g. a selection key")
        query = f"name = {quote(self.name)} and {tag_filter(tags)}"
        versions = self.client.search_model_versions(query)
        return str(max(int(v.version) for v in versions)) if versions else None

    def register_version(
        self,
        *,
        model_uri: str,
        run_id: str,
        model_id: str | None,
        tags: dict,
        description: str,
    ) -> str:
        """Create a new version (the model is created when missing) from a logged model, tag
        it, set alias ``candidate`` on it and return the version number as a string."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(self.name, description=MODEL_DESCRIPTION)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = model_uri
        if model_id:
            # MLflow's SQL registry store resolves a ``models:/<model_id>`` source with a global
            # MlflowClient() (ignoring this client's URI): pass the artifact location instead.
            source = self.client.get_logged_model(model_id).artifact_location
        version = self.client.create_model_version(
            self.name,
            source=source,
            run_id=run_id,
            tags={k: str(v) for k, v in filter_secrets(tags).items()},
            description=description,
            model_id=model_id,
        )
        self.client.set_registered_model_alias(self.name, T.ALIAS_CANDIDATE, version.version)
        return str(version.version)

    def version_info(self, version: str) -> dict:
        """Plain view of a version: version, aliases, tags, description, source, run id."""
        mv = self.client.get_model_version(self.name, str(version))
        return {
            "name": mv.name,
            "version": str(mv.version),
            "aliases": sorted(mv.aliases),
            "tags": dict(mv.tags),
            "description": mv.description,
            "source": mv.source,
            "run_id": mv.run_id,
        }

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` points to, or None when the alias (or model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return str(mv.version)

    def contender(self, version: str) -> Contender:
        """A version as the promotion gate sees it (from its tags)."""
        tags = self.client.get_model_version(self.name, str(version)).tags
        return Contender(
            version=str(version),
            task_key=tags.get(T.TASK, ""),
            predicted_loss=_float_tag(tags, T.PREDICTED_LOSS),
            interval_low=_float_tag(tags, T.INTERVAL_LOW),
            interval_high=_float_tag(tags, T.INTERVAL_HIGH),
            rolled_back=tags.get(T.ROLLED_BACK) == "true",
        )

    # -- measurements on test splits ---------------------------------------------------------
    def record_measurement(self, version: str, measurement: Measurement) -> None:
        """Keep a version's per-example losses on a test split (an artifact of its run, keyed
        by the split's fingerprint, and a tag with the loss) so that a later gate on the same
        split does not measure it again."""
        fp = measurement.test_fingerprint
        run_id = self.client.get_model_version(self.name, str(version)).run_id
        self.tracker.log_json(run_id, measurement.model_dump(), f"measurements/{fp}.json")
        self.client.set_model_version_tag(
            self.name, str(version), T.MEASURED_PREFIX + fp, repr(measurement.loss)
        )

    def measurement(self, version: str, fingerprint: str) -> Measurement | None:
        """The version's recorded measurement on the split ``fingerprint``, or None."""
        mv = self.client.get_model_version(self.name, str(version))
        if T.MEASURED_PREFIX + fingerprint not in mv.tags or not mv.run_id:
            return None
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="lensllm-measurement-") as tmp:
            try:
                local = self.client.download_artifacts(
                    mv.run_id, f"measurements/{fingerprint}.json", tmp
                )
                data = json.loads(Path(local).read_text())
            except Exception as err:  # a tag without its artifact: measure again
                logger.warning("measurement %s of v%s unreadable (%s)", fingerprint, version, err)
                return None
        return Measurement.model_validate(data)

    # -- the gate ---------------------------------------------------------------------------
    def promote_if_better(
        self,
        version: str,
        *,
        measurement: Measurement,
        measure: Callable[[str], Measurement] | None = None,
        margin: float,
        min_confidence: float = 0.9,
        lock_dir: str | None = None,
    ) -> PromotionDecision:
        """Apply the promotion gate to ``version`` (measured as ``measurement`` on the current
        test split) against the current ``champion`` and move the alias only when it passes.

        The champion is compared on the same split: its recorded measurement there, or
        ``measure(champion_version)`` (evaluating the registered model; recorded for the next
        gate). The gate reads the champion, then moves it: with ``lock_dir`` that
        read-then-write holds a lock (:mod:`tasks.runtime.locks`) per tracking URI and model
        name, so two selections finishing at once cannot both promote against the same old champion.
        On promotion the previous champion is recorded in the new champion's
        ``lensllm.previous_champion`` tag (empty when there was none) for :meth:`rollback`.
        """
        args = (str(version), measurement, measure, margin, min_confidence)
        if lock_dir is None:
            return self._promote(*args)
        path = lock_path(lock_dir, "registry", self.tracker.display_uri, self.name)
        with held(path, f"the promotion gate of {self.name}", logger):
            return self._promote(*args)

    def _promote(self, version, measurement, measure, margin, min_confidence) -> PromotionDecision:
        if self.measurement(version, measurement.test_fingerprint) is None:
            self.record_measurement(version, measurement)
        challenger = self.contender(version)
        champion_version = self.alias_version(T.ALIAS_CHAMPION)
        self._note_manual_override(champion_version)
        champion = self.contender(champion_version) if champion_version else None
        comparison = None
        if champion is not None and champion_version != version:
            comparison = self._compare(champion_version, measurement, measure)
        decision = decide_promotion(
            challenger,
            champion,
            challenger_loss=measurement.loss,
            comparison=comparison,
            margin=margin,
            min_confidence=min_confidence,
        )
        self._record_decision(version, measurement, decision)
        if decision.promote:
            self.client.set_model_version_tag(
                self.name, version, T.PREVIOUS_CHAMPION, champion_version or ""
            )
            self.client.set_registered_model_alias(self.name, T.ALIAS_CHAMPION, version)
            self._record_move(
                before=champion_version,
                after=version,
                decision="promoted",
                reason=decision.reason,
                selection_key=challenger_tags(self, version).get(T.SELECTION_KEY, ""),
                selection_run=self.client.get_model_version(self.name, version).run_id or "",
            )
        return decision

    def _compare(self, champion_version, challenger: Measurement, measure):
        """The paired comparison on the challenger's test split (None if the champion cannot
        be measured there)."""
        fp = challenger.test_fingerprint
        reference = self.measurement(champion_version, fp)
        if reference is None:
            if measure is None:
                return None
            logger.info("measuring champion v%s on test split %s", champion_version, fp)
            reference = measure(champion_version)
            self.record_measurement(champion_version, reference)
        if reference.rank_on != challenger.rank_on:
            return None
        stats = paired_bootstrap(
            challenger.example_nll,
            reference.example_nll,
            [challenger.example_units, reference.example_units],
            scale=challenger.scale,
        )
        return MeasuredComparison(
            test_fingerprint=fp,
            rank_on=challenger.rank_on,
            challenger_loss=stats.challenger_loss,
            champion_loss=stats.reference_loss,
            p_better=stats.p_better,
            difference_low=stats.difference_low,
            difference_high=stats.difference_high,
            n_examples=stats.n_examples,
        )

    def _record_decision(
        self, version: str, measurement: Measurement, decision: PromotionDecision
    ) -> None:
        """The decision on the version. A re-run of its selection that changes nothing keeps
        the first decision's reason (what a reviewer wants to read) and records its own apart."""
        first = T.GATE_REASON not in self.version_info(version)["tags"]
        key = T.GATE_REASON if first or decision.promote else T.GATE_LAST_CHECK
        tags = {
            key: decision.reason,
            T.MEASURED_LOSS: repr(measurement.loss),
            T.TEST_FINGERPRINT: measurement.test_fingerprint,
        }
        if decision.champion_measured_loss is not None:
            tags[T.CHAMPION_MEASURED_LOSS] = repr(decision.champion_measured_loss)
            tags[T.P_BETTER] = repr(decision.p_better)
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def rollback(self, reason: str | None = None) -> dict:
        """Move ``champion`` back to the version that held it before the current champion.

        Returns ``{"champion": <restored version>, "rolled_back_from": <previous champion>}``.

        Raises
        ------
        RegistryError
            When there is no champion or the champion has no recorded predecessor.
        """
        current = self.alias_version(T.ALIAS_CHAMPION)
        if current is None:
            raise RegistryError(f"registered model {self.name!r} has no champion to roll back")
        previous = self.client.get_model_version(self.name, current).tags.get(T.PREVIOUS_CHAMPION)
        if not previous:
            raise RegistryError(
                f"champion v{current} of {self.name!r} has no previous champion recorded (tag "
                f"{T.PREVIOUS_CHAMPION}); set the alias by hand with "
                "MlflowClient.set_registered_model_alias if a rollback is still needed"
            )
        self.client.set_registered_model_alias(self.name, T.ALIAS_CHAMPION, previous)
        self.client.set_model_version_tag(self.name, current, T.ROLLED_BACK, "true")
        self._record_move(
            before=current,
            after=previous,
            decision="rolled back",
            reason=reason or f"v{current} rolled back by hand (lensllm registry rollback)",
        )
        return {"champion": previous, "rolled_back_from": current}

    # -- history ----------------------------------------------------------------------------
    def history(self) -> list[dict]:
        """Every recorded move of the ``champion`` alias, oldest first (time, alias, version
        before and after, decision, reason, and the selection and flow run behind it)."""
        try:
            tags = self.client.get_registered_model(self.name).tags
        except Exception as err:
            from mlflow.exceptions import MlflowException

            if isinstance(err, MlflowException) and err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise
        entries = [
            json.loads(value) for key, value in tags.items() if key.startswith(T.HISTORY_PREFIX)
        ]
        return sorted(entries, key=lambda e: e["seq"])

    def _record_move(self, **entry) -> dict:
        """Append a move to the history (a registered-model tag per move: durable, in the
        registry itself) and show it in the registered model's description."""
        from datetime import UTC, datetime

        seq = len(self.history()) + 1
        record = {
            "seq": seq,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": self.name,
            "alias": T.ALIAS_CHAMPION,
            "before": entry.pop("before") or None,
            "after": entry.pop("after") or None,
            "selection_key": entry.pop("selection_key", ""),
            "selection_run": entry.pop("selection_run", ""),
            "flow_run": _flow_run_id(),
            **entry,
        }
        self.client.set_registered_model_tag(
            self.name, f"{T.HISTORY_PREFIX}{seq:06d}", json.dumps(record)
        )
        self.client.update_registered_model(self.name, description=_model_description(record))
        return record

    def _note_manual_override(self, champion_version: str | None) -> None:
        """A champion alias moved outside LensLLM since the last recorded move: record it."""
        last = next(reversed(self.history()), None)
        recorded = last["after"] if last else None
        if champion_version != recorded:
            why = "moved outside LensLLM" if last else "set before any move was recorded"
            self._record_move(
                before=recorded,
                after=champion_version,
                decision="manual override",
                reason=f"the champion alias was {why} (detected at the next gate)",
            )


def challenger_tags(registry: ModelRegistry, version: str) -> dict[str, str]:
    return dict(registry.client.get_model_version(registry.name, version).tags)


def _flow_run_id() -> str:
    """The Prefect flow run this runs in, if any."""
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx and ctx.flow_run else ""
    except Exception:  # outside Prefect: no flow run to name
        return ""


def _model_description(latest: dict) -> str:
    """The registered model's description: what it is, and the latest alias move."""
    move = (
        f"champion v{latest['before'] or '-'} -> v{latest['after'] or '-'} "
        f"({latest['decision']}, {latest['time']}): {latest['reason']}"
    )
    return (
        f"{MODEL_DESCRIPTION}. Latest alias move: {move} Full history: `lensllm registry "
        f"history --name {latest['model']}`."
    )
