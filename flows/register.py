"""Register flow: log a merged fine-tuned model, register it, and run the promotion gate on
measured loss (``tasks/promotion/policy.py`` states the rule).

Runnable alone (the model is measured on the given test file first)::

    python -m flows.register MODEL_DIR --name lensllm-wordnet --task-key wordnet \\
        --selection-key SEL --test-file test.jsonl --predicted-loss 2.31 --interval 2.2 2.4

One version per model:

- re-running with the same ``selection_key`` creates no new version: the existing version is
  found by its ``lensllm.selection_key`` tag and only the (idempotent) gate runs again;
- a model whose weights (sha256 of the folder's files) and training-data fingerprint equal an
  existing version's (another selection that trained the same model, e.g. one that changed
  only ``validate.top_k``) adds no version either: the run is linked to that version, and the
  gate does not run (it would compare the model with itself).
"""

from __future__ import annotations

import contextlib

from prefect import flow

from tasks.promotion.policy import PromotionDecision, version_description, version_tags
from tasks.records.schema import GateInputs, Registration, RegistrationRequest
from tasks.registration import (
    end_run_task,
    find_version_task,
    link_run_task,
    log_model_task,
    promotion_gate_task,
    register_version_task,
    start_run_task,
    version_info_task,
    weights_hash_task,
)
from tasks.runtime.locks import held, lock_path
from tasks.tracking import tags as T


@flow(name="register-model")
def register_flow(
    request: RegistrationRequest,
    gate: GateInputs,
    lock_dir: str | None = ".lensllm/locks",
) -> Registration:
    """Register ``request.model_dir`` (a saved, merged transformers causal LM) under
    ``request.registered_name`` with alias ``candidate``, then move ``champion`` if the gate
    passes.

    With ``request.parent_run_id`` (a selection) the model is logged in that run, so the
    registered version links to the selection in the MLflow UI; alone, a run of its own is
    made. The gate (``gate``: the current test split and the challenger's measurement on it)
    runs under a lock in ``lock_dir`` (``tasks.runtime.locks``), so concurrent selections
    promote one at a time. A model that a version already holds adds none (module docstring).
    """
    weights = weights_hash_task(request)
    tags = _tags(request, weights)
    # look-up and registration at once: two selections finishing together with the same model
    # must not both find no version and both add one
    with _registration_lock(request, lock_dir):
        version = find_version_task(request, {T.SELECTION_KEY: request.selection_key})
        run_id, created = request.parent_run_id, version is None
        if version is None:
            same = _same_model(request, weights)
            if same is not None:
                return _already_registered(request, same, weights, gate)
            version, run_id = _new_version(request, tags)
    decision = promotion_gate_task(request, version, gate, lock_dir)
    if run_id is not None:
        link_run_task(request, run_id, version)
    info = version_info_task(request, version)
    return _registration(request, info, decision, weights, created=created, run_id=run_id)


def _registration_lock(request: RegistrationRequest, lock_dir: str | None):
    """The inter-process lock of registrations under one model name (none without
    ``lock_dir``)."""
    if lock_dir is None:
        return contextlib.nullcontext()
    key = lock_path(lock_dir, "registration", request.tracking_uri, request.registered_name)
    return held(key, f"registering {request.registered_name}")


def _tags(request: RegistrationRequest, weights: str) -> dict[str, str]:
    """The version's tags: the prediction, the provenance, the weights' and data's identity."""
    extra = {**request.tags, T.WEIGHTS_SHA256: weights}
    if request.data_fingerprint:
        extra[T.DATA_FINGERPRINT] = request.data_fingerprint
    predicted = request.predicted_loss
    return version_tags(
        task_key=request.task_key,
        selection_key=request.selection_key,
        predicted_loss=float("nan") if predicted is None else predicted,
        interval=list(request.interval or (float("nan"), float("nan"))),
        selector=request.selector,
        extra=extra,
    )


def _same_model(request: RegistrationRequest, weights: str) -> str | None:
    """The version that already holds these weights trained on this data, or None (never
    without a data fingerprint: the weights alone do not say what the model was trained on)."""
    if not request.data_fingerprint:
        return None
    same = {T.WEIGHTS_SHA256: weights, T.DATA_FINGERPRINT: request.data_fingerprint}
    return find_version_task(request, same)


def _new_version(request: RegistrationRequest, tags: dict[str, str]) -> tuple[str, str]:
    """Log the model (in the selection's run, or a run of its own) and register it; returns
    the version and the run it was logged in."""
    parent = request.parent_run_id
    run_id = parent or start_run_task(
        request, f"register-{request.registered_name}", {**tags, T.RUN_KIND: "register"}
    )
    try:
        logged = log_model_task(request, run_id)
        description = version_description(tags)
        version = register_version_task(request, logged, run_id, tags, description)
    except Exception:
        if run_id != parent:
            end_run_task(request, run_id, "FAILED")
        raise
    if run_id != parent:
        end_run_task(request, run_id, "FINISHED")
    return version, run_id


def _already_registered(
    request: RegistrationRequest, version: str, weights: str, gate: GateInputs
) -> Registration:
    """An identical model is registered: link the run to it and leave the gate alone."""
    if request.parent_run_id is not None:
        link_run_task(request, request.parent_run_id, version)
    info = version_info_task(request, version)
    return Registration(
        version=version,
        aliases=info["aliases"],
        reason=(
            f"already registered as version {version} (same weights, sha256 {weights[:12]}, "
            f"and training data {request.data_fingerprint}): no new version, and the gate "
            "does not compare the model with itself"
        ),
        already_registered=True,
        run_id=request.parent_run_id,
        challenger_measured_loss=gate.measurement.loss,
        weights_sha256=weights,
        finetune_size=request.finetune_size,
        model_dir=request.model_dir,
    )


def _registration(
    request: RegistrationRequest,
    info: dict,
    decision: PromotionDecision,
    weights: str,
    *,
    created: bool,
    run_id: str | None,
) -> Registration:
    return Registration(
        version=info["version"],
        aliases=info["aliases"],
        promoted=decision.promote,
        reason=decision.reason,
        created=created,
        run_id=run_id,
        challenger_measured_loss=decision.challenger_measured_loss,
        champion_version=decision.champion_version,
        champion_measured_loss=decision.champion_measured_loss,
        p_better=decision.p_better,
        weights_sha256=weights,
        finetune_size=request.finetune_size,
        model_dir=request.model_dir,
    )


def _known(value: float) -> float | None:
    return None if value != value else value  # NaN: not given
