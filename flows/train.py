"""Train flow: fine-tune candidates at the target size with the probes' recipe and measure them.

This is the model a selection recommends training: the candidate fine-tuned on
``target_size`` training examples (or the whole train split when that is smaller) with the
same method, LoRA settings, learning rate, epochs and early stopping as its probes, evaluated on
the selection's fixed test split with the same loss definitions, so the measurement is exactly
the quantity that was predicted. Each training is the same cached probe task as the ladder's
(a re-run takes it from cache; an interrupted one starts again), on the configured device, and
its merged weights are saved for the registry.

A flow of its own so that it can run on its own work pool (e.g. a GPU pool)::

    prefect deployment run train-at-target/train-at-target \\
        --param config_path=configs/demo.yaml --param 'candidates=["smollm2-135m"]'
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import RunnerConfig, SelectionConfig, load_config
from flows.runners import probe_threads
from tasks.data import prepare_data_task
from tasks.models import describe_candidate, resolve_candidate_task
from tasks.probing.plan import ProbePlan
from tasks.records.schema import PreparedData, ProbeResult
from tasks.runtime.progress import Progress
from tasks.runtime.result_storage import result_storage
from tasks.training.precision import resolved_spec


@flow(name="train-at-target", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def train_flow(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    candidates: list[str] | None = None,
    config: dict | None = None,
) -> dict[str, ProbeResult]:
    """Train ``candidates`` (default: every candidate of the config) at the target.

    The config comes from ``config_path`` and ``overrides``, or as an already resolved
    ``config`` mapping (what the select flow passes). Returns candidate -> the measured result.
    """
    cfg = SelectionConfig.model_validate(config) if config else load_config(config_path, overrides)
    names = list(candidates or [c.name for c in cfg.candidates])
    unknown = sorted(set(names) - {c.name for c in cfg.candidates})
    if unknown:
        from tasks.records.errors import ConfigError

        raise ConfigError(f"candidates {unknown} are not in the config's candidates")
    cache = Path(cfg.cache_dir).resolve()
    data = prepare_data_task(cfg.dataset, cfg.ladder, cfg.target_size)
    trust = cfg.trust()
    models = {
        name: resolve_candidate_task(
            name, cache_dir=str(cache / "models"), trust_remote_code=trust[name]
        )
        for name in names
    }
    plan = ProbePlan(
        data=data,
        models=models,
        trust=trust,
        spec=resolved_spec(cfg.probe),  # the select flow passes it resolved already
        # one training at a time, in this process: it gets every local core, whatever runner
        # the ladder's probes used
        threads=probe_threads(RunnerConfig(kind="thread", max_workers=1)),
        cache_dir=cache,
        storage=result_storage(cache),
    )
    return train_at_target(plan, names)


def train_at_target(plan: ProbePlan, names: list[str]) -> dict[str, ProbeResult]:
    """Every named candidate fine-tuned on the target's training examples, weights saved."""
    data: PreparedData = plan.data
    size = data.target_examples
    logger = get_run_logger()
    if data.target_size and size < data.target_size:
        logger.warning(
            "training at the target: the train split has %d examples, fewer than target_size "
            "%d; %s trained on all %d (the measurement is at %d examples)",
            size,
            data.target_size,
            ", ".join(names),
            size,
            size,
        )
    else:
        logger.info("training %s at the target: %d examples", ", ".join(names), size)
    futures = {name: plan.submit(name, size, save=True, verb="train") for name in names}
    n_params = {name: describe_candidate(plan.models[name])["n_params"] for name in names}
    progress = Progress(
        {(name, size): float(n_params[name] * size) for name in names}, title="training"
    )
    plan = dataclasses.replace(plan, progress=progress)
    out = {name: plan.result(future, (name, size)) for name, future in futures.items()}
    progress.close()
    return out
