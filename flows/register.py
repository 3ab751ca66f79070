"""Register flow: log a merged fine-tuned model, register it, and run the promotion gate on
measured loss (``tasks/promotion/policy.py`` states the rule).

Runnable alone (the model is measured on the given test file first)::

    lensllm register MODEL_DIR --name lensllm-wordnet --task-key wordnet \\
        --selection-key SEL --test-file test.jsonl --predicted-loss 2.31 --interval 2.2 2.4

Re-running with the same ``selection_key`` creates no new version: the existing version is
found by its ``lensllm.selection_key`` tag and only the (idempotent) gate runs again.
"""

from __future__ import annotations

from prefect import flow

from tasks.promotion.policy import version_description, version_tags
from tasks.records.schema import GateInputs
from tasks.registration import (
    end_run_task,
    find_version_task,
    log_model_task,
    promotion_gate_task,
    register_version_task,
    start_run_task,
    version_info_task,
)
from tasks.tracking import tags as T


@flow(name="register-model")
def register_flow(
    model_dir: str,
    *,
    registered_name: str,
    task_key: str,
    selection_key: str,
    predicted_loss: float,
    interval: list[float],
    selector: str,
    tags: dict,
    tracking_uri: str,
    experiment: str,
    gate: GateInputs,
    parent_run_id: str | None = None,
    max_new_tokens: int = 32,
    lock_dir: str | None = ".lensllm/locks",
) -> dict:
    """Register ``model_dir`` (a saved, merged transformers causal LM) under
    ``registered_name`` with alias ``candidate``, then move ``champion`` if the gate passes.

    With ``parent_run_id`` (a selection) the model is logged in that run, so the registered
    version links to the selection in the MLflow UI; alone, a run of its own is made. ``tags``
    should hold the provenance tags (``lensllm.git_commit``, ``lensllm.config_hash``,
    ``lensllm.data_fingerprint``). The gate (``gate``: the current test split and the
    challenger's measurement on it) runs under a lock in ``lock_dir`` (``tasks.runtime.locks``), so
    concurrent selections promote one at a time. Returns the version, its aliases, the gate's
    decision, whether a version was created and the run it was logged in.
    """
    all_tags = version_tags(
        task_key=task_key,
        selection_key=selection_key,
        predicted_loss=predicted_loss,
        interval=interval,
        selector=selector,
        extra=tags,
    )
    version = find_version_task(tracking_uri, registered_name, {T.SELECTION_KEY: selection_key})
    run_id, created = None, version is None
    if version is None:
        run_id = parent_run_id or start_run_task(
            tracking_uri,
            experiment,
            f"register-{registered_name}",
            {**all_tags, T.RUN_KIND: "register"},
            {},
            None,
        )
        try:
            logged = log_model_task(tracking_uri, run_id, model_dir, max_new_tokens)
            version = register_version_task(
                tracking_uri,
                registered_name,
                logged,
                run_id,
                all_tags,
                version_description(all_tags),
            )
        except Exception:
            if run_id != parent_run_id:
                end_run_task(tracking_uri, run_id, "FAILED")
            raise
        if run_id != parent_run_id:
            end_run_task(tracking_uri, run_id, "FINISHED")
    decision = promotion_gate_task(tracking_uri, registered_name, version, gate, lock_dir)
    info = version_info_task(tracking_uri, registered_name, version)
    return {
        "version": version,
        "aliases": info["aliases"],
        "promoted": decision["promote"],
        "reason": decision["reason"],
        "created": created,
        "run_id": run_id,
        "challenger_measured_loss": decision["challenger_measured_loss"],
        "champion_version": decision["champion_version"],
        "champion_measured_loss": decision["champion_measured_loss"],
        "p_better": decision["p_better"],
        "model_dir": model_dir,
    }
