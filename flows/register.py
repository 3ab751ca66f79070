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

import argparse
import json
from pathlib import Path

from prefect import flow

from tasks.data.splits import fingerprint
from tasks.promotion.policy import PromotionDecision, version_description, version_tags
from tasks.records.schema import GateInputs, ProbeSpec, Registration, RegistrationRequest
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
from tasks.tracking import tags as T
from tasks.tracking.client import default_tracking_uri
from tasks.training.measure import measure_folder


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


def _read_examples(path: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [{"prompt": r["prompt"], "target": r["target"]} for r in rows]


def main(argv: list[str] | None = None) -> Registration:
    """Command line entry: ``python -m flows.register MODEL_DIR --name ... --task-key ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--name", required=True, help="registered model name (one per task)")
    parser.add_argument("--task-key", required=True)
    parser.add_argument("--selection-key", required=True)
    parser.add_argument(
        "--test-file", required=True, help="JSONL of {prompt, target}: the shared test split"
    )
    parser.add_argument("--predicted-loss", type=float, default=float("nan"))
    parser.add_argument(
        "--interval", type=float, nargs=2, default=[float("nan")] * 2, metavar=("LOW", "HIGH")
    )
    parser.add_argument("--selector", default="manual")
    parser.add_argument("--rank-on", default="bits_per_byte")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tracking-uri", default=None, help="default: .lensllm/mlflow.db")
    parser.add_argument("--experiment", default="lensllm-register")
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--min-confidence", type=float, default=0.9)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--tag {item!r} must look like KEY=VALUE")
        tags[key] = value
    result = register_flow(_request(args, tags), _gate(args))
    print(json.dumps(result.model_dump(mode="json"), indent=2))
    return result


def _gate(args: argparse.Namespace) -> GateInputs:
    """The test file as the gate's split, and the model measured on it."""
    test = _read_examples(args.test_file)
    spec = ProbeSpec()
    split = fingerprint(test)
    return GateInputs(
        test=test,
        test_fingerprint=split,
        spec=spec,
        rank_on=args.rank_on,
        measurement=measure_folder(
            args.model_dir, test, spec, rank_on=args.rank_on, fingerprint=split
        ),
        margin=args.margin,
        min_confidence=args.min_confidence,
    )


def _request(args: argparse.Namespace, tags: dict[str, str]) -> RegistrationRequest:
    return RegistrationRequest(
        model_dir=args.model_dir,
        registered_name=args.name,
        task_key=args.task_key,
        selection_key=args.selection_key,
        predicted_loss=_known(args.predicted_loss),
        interval=None if any(x != x for x in args.interval) else tuple(args.interval),
        selector=args.selector,
        data_fingerprint=tags.get(T.DATA_FINGERPRINT),
        tags=tags,
        tracking_uri=args.tracking_uri or default_tracking_uri(),
        experiment=args.experiment,
        max_new_tokens=args.max_new_tokens,
    )


if __name__ == "__main__":
    main()
