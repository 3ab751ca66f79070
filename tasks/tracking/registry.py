"""The MLflow model registry: versions, aliases, the promotion gate applied, rollback.

The *policy* (who becomes champion) is :func:`tasks.registry.decide_promotion`, pure code over
frozen records; :class:`ModelRegistry` reads the registry, calls it and moves the aliases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from tasks.errors import RegistryError
from tasks.locks import held, lock_path
from tasks.registry import Contender, decide_promotion
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

    def promote_if_better(
        self,
        version: str,
        *,
        margin: float,
        require_disjoint_intervals: bool = False,
        lock_dir: str | None = None,
    ) -> dict:
        """Apply the promotion gate to ``version`` against the current ``champion`` and move
        the alias only when it passes.

        The gate reads the champion, then moves it: with ``lock_dir`` that read-then-write holds
        a lock (:mod:`tasks.locks`) per tracking URI and model name, so two selections finishing
        at once cannot both promote against the same old champion. On promotion the previous
        champion is recorded in the new champion's ``lensllm.previous_champion`` tag (empty when
        there was none) for :meth:`rollback`. Returns the decision as a dict.
        """
        if lock_dir is None:
            return self._promote(str(version), margin, require_disjoint_intervals)
        path = lock_path(lock_dir, "registry", self.tracker.display_uri, self.name)
        with held(path, f"the promotion gate of {self.name}", logger):
            return self._promote(str(version), margin, require_disjoint_intervals)

    def _promote(self, version: str, margin: float, require_disjoint_intervals: bool) -> dict:
        challenger = self.contender(version)
        champion_version = self.alias_version(T.ALIAS_CHAMPION)
        champion = self.contender(champion_version) if champion_version else None
        decision = decide_promotion(
            challenger,
            champion,
            margin=margin,
            require_disjoint_intervals=require_disjoint_intervals,
        )
        self.client.set_model_version_tag(self.name, version, T.GATE_REASON, decision.reason)
        if decision.promote:
            self.client.set_model_version_tag(
                self.name, version, T.PREVIOUS_CHAMPION, champion_version or ""
            )
            self.client.set_registered_model_alias(self.name, T.ALIAS_CHAMPION, version)
        return decision.to_dict()

    def rollback(self) -> dict:
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
        return {"champion": previous, "rolled_back_from": current}
