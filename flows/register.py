"""Register flow: log a merged fine-tuned model, register it, and run the promotion gate.

Runnable alone::

    python -m flows.register MODEL_DIR --name lensllm-wordnet --task-key wordnet \\
        --selection-key SEL --predicted-loss 2.31 --interval 2.2 2.4 --selector ats

Re-running with the same ``selection_key`` creates no new version: the existing version is
found by its ``lensllm.selection_key`` tag and only the (idempotent) gate runs again.
"""

from __future__ import annotations

import argparse
import json

from prefect import flow

from tasks.registration import (
    end_run_task,
    find_version_task,
    log_model_task,
    promotion_gate_task,
    register_version_task,
    start_run_task,
    version_info_task,
)
from tasks.registry import version_description, version_tags
from tasks.tracking import tags as T
from tasks.tracking.client import default_tracking_uri


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
    margin: float,
    parent_run_id: str | None = None,
    max_new_tokens: int = 32,
    require_disjoint_intervals: bool = False,
    lock_dir: str | None = ".lensllm/locks",
) -> dict:
    """Register ``model_dir`` (a saved, merged transformers causal LM) under
    ``registered_name`` with alias ``candidate``, then move ``champion`` if the gate passes.

    ``tags`` should hold ``lensllm.git_commit``, ``lensllm.config_hash`` and
    ``lensllm.data_fingerprint``. Returns ``{"version", "aliases", "promoted", "reason",
    "created", "run_id"}`` (``run_id`` is None when an existing version was reused).
    The gate runs under a lock in ``lock_dir`` (see ``tasks.locks``), so concurrent
    selections promote one at a time.
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
    run_id = None
    if version is None:
        run_id = start_run_task(
            tracking_uri,
            experiment,
            f"register-{registered_name}",
            {**all_tags, T.RUN_KIND: "register"},
            {"model_dir": model_dir, "margin": margin, "max_new_tokens": max_new_tokens},
            parent_run_id,
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
            end_run_task(tracking_uri, run_id, "FAILED")
            raise
        end_run_task(tracking_uri, run_id, "FINISHED")
    decision = promotion_gate_task(
        tracking_uri, registered_name, version, margin, require_disjoint_intervals, lock_dir
    )
    info = version_info_task(tracking_uri, registered_name, version)
    return {
        "version": version,
        "aliases": info["aliases"],
        "promoted": decision["promote"],
        "reason": decision["reason"],
        "created": run_id is not None,
        "run_id": run_id,
    }


def main(argv: list[str] | None = None) -> dict:
    """Command line entry: ``python -m flows.register MODEL_DIR --name ... --task-key ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--name", required=True, help="registered model name (one per task)")
    parser.add_argument("--task-key", required=True)
    parser.add_argument("--selection-key", required=True)
    parser.add_argument("--predicted-loss", type=float, required=True)
    parser.add_argument("--interval", type=float, nargs=2, required=True, metavar=("LOW", "HIGH"))
    parser.add_argument("--selector", default="manual")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tracking-uri", default=None, help="default: .lensllm/mlflow.db")
    parser.add_argument("--experiment", default="lensllm-register")
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--tag {item!r} must look like KEY=VALUE")
        tags[key] = value
    result = register_flow(
        args.model_dir,
        registered_name=args.name,
        task_key=args.task_key,
        selection_key=args.selection_key,
        predicted_loss=args.predicted_loss,
        interval=list(args.interval),
        selector=args.selector,
        tags=tags,
        tracking_uri=args.tracking_uri or default_tracking_uri(),
        experiment=args.experiment,
        margin=args.margin,
        max_new_tokens=args.max_new_tokens,
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
