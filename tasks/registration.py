"""Prefect tasks of the register flow: hash the weights, log a merged model, register a
version, run the gate, link the run.

Thin wrappers over :mod:`tasks.tracking` that take the flow's records
(:class:`~tasks.records.schema.RegistrationRequest`, :class:`~tasks.records.schema.GateInputs`),
so a deployment of ``flows/register.py`` can run them with its parameters. They have side
effects and are never cached. Each run is named for what it acts on (``gate
lensllm-wordnet v3``), so the Prefect UI reads as the registration's steps.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.promotion.policy import PromotionDecision
from tasks.records.schema import GateInputs, RegistrationRequest
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.model_registry import ModelRegistry
from tasks.tracking.models import log_transformers_model
from tasks.training.measure import measure_registered


def _registry(request: RegistrationRequest) -> ModelRegistry:
    return ModelRegistry(Tracker(request.tracking_uri), request.registered_name)


def folder_sha256(folder: str) -> str:
    """sha256 over every file of ``folder`` (relative path and content, in path order): two
    saved models hash alike exactly when their files are identical."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


@task(name="hash-weights", task_run_name="hash {request.model_dir}", cache_policy=NO_CACHE)
def weights_hash_task(request: RegistrationRequest) -> str:
    return folder_sha256(request.model_dir)


@task(
    name="registry-find-version",
    task_run_name="find {request.registered_name} version",
    cache_policy=NO_CACHE,
)
def find_version_task(request: RegistrationRequest, tags: dict[str, str]) -> str | None:
    """The newest version carrying all ``tags``, or None."""
    return _registry(request).find_version(tags)


@task(name="mlflow-start-run", task_run_name="start run {run_name}", cache_policy=NO_CACHE)
def start_run_task(request: RegistrationRequest, run_name: str, tags: dict[str, str]) -> str:
    return Tracker(request.tracking_uri).create_run(request.experiment, run_name, tags)


@task(name="mlflow-end-run", task_run_name="end run {run_id} {status}", cache_policy=NO_CACHE)
def end_run_task(request: RegistrationRequest, run_id: str, status: str) -> None:
    Tracker(request.tracking_uri).end_run(run_id, status)


@task(
    name="mlflow-log-transformers-model",
    task_run_name="log model {request.model_dir}",
    cache_policy=NO_CACHE,
)
def log_model_task(request: RegistrationRequest, run_id: str) -> dict:
    return log_transformers_model(
        Tracker(request.tracking_uri),
        run_id,
        request.model_dir,
        max_new_tokens=request.max_new_tokens,
    )


@task(
    name="registry-register-version",
    task_run_name="register {request.registered_name}",
    cache_policy=NO_CACHE,
)
def register_version_task(
    request: RegistrationRequest, logged: dict, run_id: str, tags: dict, description: str
) -> str:
    return _registry(request).register_version(
        model_uri=logged["model_uri"],
        run_id=run_id,
        model_id=logged["model_id"],
        tags=tags,
        description=description,
    )


@task(
    name="registry-promotion-gate",
    task_run_name="gate {request.registered_name} v{version}",
    cache_policy=NO_CACHE,
)
def promotion_gate_task(
    request: RegistrationRequest, version: str, gate: GateInputs, lock_dir: str | None
) -> PromotionDecision:
    """The gate on measured loss: the challenger's measurement against the champion's on the
    same test split (the champion is loaded from the registry and measured when it has no
    measurement on that split yet)."""

    def measure_champion(champion: str):
        return measure_registered(
            request.tracking_uri,
            request.registered_name,
            champion,
            gate.test,
            gate.spec,
            rank_on=gate.rank_on,
            fingerprint=gate.test_fingerprint,
        )

    return _registry(request).promote_if_better(
        version,
        measurement=gate.measurement,
        measure=measure_champion,
        margin=gate.margin,
        min_confidence=gate.min_confidence,
        lock_dir=lock_dir,
    )


@task(
    name="registry-version-info",
    task_run_name="read {request.registered_name} v{version}",
    cache_policy=NO_CACHE,
)
def version_info_task(request: RegistrationRequest, version: str) -> dict:
    return _registry(request).version_info(version)


@task(
    name="mlflow-link-version",
    task_run_name="link run {run_id} to v{version}",
    cache_policy=NO_CACHE,
)
def link_run_task(request: RegistrationRequest, run_id: str, version: str) -> None:
    """Name on the run the version that holds its model (found again by these tags)."""
    Tracker(request.tracking_uri).log(
        run_id,
        tags={T.REGISTERED_MODEL: request.registered_name, T.REGISTERED_VERSION: version},
    )
