"""Prefect tasks of the register flow: log a merged model, register a version, run the gate.

Thin wrappers over :mod:`tasks.tracking` that take plain values (the tracking URI as a
string), so a deployment of ``flows/register.py`` can run them with flow parameters. They have
side effects and are never cached.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.records.schema import GateInputs
from tasks.tracking.client import Tracker
from tasks.tracking.model_registry import ModelRegistry
from tasks.tracking.models import log_transformers_model
from tasks.training.measure import measure_registered


@task(name="registry-find-version", cache_policy=NO_CACHE)
def find_version_task(tracking_uri: str, name: str, tags: dict) -> str | None:
    return ModelRegistry(Tracker(tracking_uri), name).find_version(tags)


@task(name="mlflow-start-run", cache_policy=NO_CACHE)
def start_run_task(
    tracking_uri: str, experiment: str, run_name: str, tags: dict, params: dict, parent: str | None
) -> str:
    tracker = Tracker(tracking_uri)
    run_id = tracker.create_run(experiment, run_name, tags, parent_run_id=parent)
    tracker.log(run_id, params=params)
    return run_id


@task(name="mlflow-end-run", cache_policy=NO_CACHE)
def end_run_task(tracking_uri: str, run_id: str, status: str) -> None:
    Tracker(tracking_uri).end_run(run_id, status)


@task(name="mlflow-log-transformers-model", cache_policy=NO_CACHE)
def log_model_task(tracking_uri: str, run_id: str, model_dir: str, max_new_tokens: int) -> dict:
    return log_transformers_model(
        Tracker(tracking_uri), run_id, model_dir, max_new_tokens=max_new_tokens
    )


@task(name="registry-register-version", cache_policy=NO_CACHE)
def register_version_task(
    tracking_uri: str, name: str, logged: dict, run_id: str, tags: dict, description: str
) -> str:
    return ModelRegistry(Tracker(tracking_uri), name).register_version(
        model_uri=logged["model_uri"],
        run_id=run_id,
        model_id=logged["model_id"],
        tags=tags,
        description=description,
    )


@task(name="registry-promotion-gate", cache_policy=NO_CACHE)
def promotion_gate_task(
    tracking_uri: str,
    name: str,
    version: str,
    gate: GateInputs,
    lock_dir: str | None,
) -> dict:
    """The gate on measured loss: the challenger's measurement against the champion's on the
    same test split (the champion is loaded from the registry and measured when it has no
    measurement on that split yet)."""

    def measure_champion(champion: str):
        return measure_registered(
            tracking_uri,
            name,
            champion,
            gate.test,
            gate.spec,
            rank_on=gate.rank_on,
            fingerprint=gate.test_fingerprint,
        )

    return ModelRegistry(Tracker(tracking_uri), name).promote_if_better(
        version,
        measurement=gate.measurement,
        measure=measure_champion,
        margin=gate.margin,
        min_confidence=gate.min_confidence,
        lock_dir=lock_dir,
    )


@task(name="registry-version-info", cache_policy=NO_CACHE)
def version_info_task(tracking_uri: str, name: str, version: str) -> dict:
    return ModelRegistry(Tracker(tracking_uri), name).version_info(version)
