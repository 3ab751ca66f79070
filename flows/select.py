"""Selection flow: subsample -> probe -> fit -> select -> MLflow -> registry.

The recipe is :func:`run_selection`; each step is a task (or a small group of tasks) from
``tasks/``, and what flows between them are the records of :mod:`tasks.records`.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import SelectionConfig, load_config
from flows.register import register_flow
from flows.runners import build_task_runner, probe_threads
from tasks.data import prepare_data_task
from tasks.fit import fit_and_select_task
from tasks.live_probes import budget_accounting
from tasks.locks import held, lock_path
from tasks.models import describe_candidate, resolve_candidate_task
from tasks.ntk import candidate_ntk, f_term
from tasks.plots import plot_selection, plot_spectra
from tasks.probing import ProbePlan
from tasks.records import (
    NtkResult,
    PreparedData,
    ProbeResult,
    Registration,
    SelectionResult,
    SelectionSummary,
)
from tasks.result_storage import result_storage
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.runs import open_selection_run
from tasks.tracking.secrets import display_uri
from tasks.tracking.selection import log_budget, log_selection


@flow(name="select-model", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def select_flow(
    config_path: str | None = None, overrides: list[str] | None = None
) -> SelectionSummary:
    """Run one selection from a YAML config (``overrides``: ``key.sub=value`` strings)."""
    cfg = load_config(config_path, overrides)
    return run_selection(cfg)


def run_selection(cfg: SelectionConfig) -> SelectionSummary:
    """The recipe: validate the data and candidates, then (holding the selection's lock so
    the same selection started twice waits and then takes everything from cache) probe,
    fit, select, track and register."""
    started_ms = int(time.time() * 1000)
    cache = Path(cfg.cache_dir).resolve()
    tracker = Tracker.resolve(cfg.tracking.uri, cache)
    # What can fail fails before compute is spent: the data ladder, every candidate, MLflow.
    data = prepare_data_task(cfg.dataset, cfg.ladder)
    models = {
        c.name: resolve_candidate_task(
            c.name, cache_dir=str(cache / "models"), trust_remote_code=c.trust_remote_code
        )
        for c in cfg.candidates
    }
    n_params = {name: int(describe_candidate(path)["n_params"]) for name, path in models.items()}
    _log_inputs(data, n_params)
    tracker.check_reachable()
    key = selection_key(cfg, data)
    with held(lock_path(cache / "locks", "selection", key), f"selection {key}", get_run_logger()):
        plan = ProbePlan(
            data=data,
            models=models,
            trust=cfg.trust(),
            spec=cfg.probe,
            threads=probe_threads(cfg.runner),
            cache_dir=cache,
            storage=result_storage(cache),
        )
        ntk = candidate_ntk(
            models,
            cfg.trust(),
            data.train,
            cfg.probe,
            cfg.ntk,
            threads=plan.threads,
            storage=plan.storage,
        )
        probes, adaptive = _probe(cfg, plan, n_params)
        f_terms = f_terms_of(ntk, probes, cfg.probe.learning_rate)
        result = fit_and_select_task(
            probes,
            n_params,
            f_terms=f_terms or None,
            rank_with_f=cfg.ntk.rank_with_f,
            target_size=cfg.target_size,
            budget=cfg.ladder.budget,
            selector=cfg.selector,
            rank_on=cfg.rank_on,
            seed=cfg.probe.seed,
            adaptive=adaptive,
            intervals=cfg.intervals,
        )
        plots = _plots(result, probes, ntk, f_terms)
        with _tracking_errors(tracker):
            summary = _track_and_register(
                cfg, tracker, key, started_ms, plan, probes, result, ntk, n_params, adaptive, plots
            )
    _prefect_artifacts(summary)
    return summary


def _probe(cfg: SelectionConfig, plan: ProbePlan, n_params: dict[str, int]):
    """The full ladder, or the probes an adaptive ``Lens`` chooses within its compute cap."""
    if not cfg.adaptive.enabled:
        return plan.ladder(), None
    return plan.adaptive(
        n_params,
        rank_on=cfg.rank_on,
        target_size=cfg.target_size,
        fraction=cfg.adaptive.ladder_fraction(cfg.target_size, plan.data.sizes),
        intervals=cfg.intervals,
    )


def selection_key(cfg: SelectionConfig, data: PreparedData) -> str:
    """What identifies a selection: the resolved config and the data's fingerprint."""
    return hashlib.sha256(f"{cfg.config_hash()}:{data.fingerprint}".encode()).hexdigest()[:16]


def f_terms_of(
    ntk: dict[str, NtkResult], probes: dict[str, list[ProbeResult]], eta: float
) -> dict[str, float]:
    """F(eta, t) per candidate with NTK features, t = steps to early stopping of its largest
    probe."""
    return {
        name: f_term(feats, eta, max(probes[name], key=lambda p: p.size).training_steps)
        for name, feats in ntk.items()
    }


def _track_and_register(
    cfg, tracker, key, started_ms, plan, probes, result, ntk, n_params, adaptive, plots
) -> SelectionSummary:
    """The parent run spans the whole selection (resumed after a crash); registration runs
    inside it, and the run ends FINISHED only when everything is logged."""
    run_id, resumed = open_selection_run(
        tracker,
        cfg.tracking.experiment,
        f"select-{cfg.name}",
        provenance_tags(cfg, plan.data, key),
        _run_params(cfg, plan.data, list(probes)),
        cfg.resolved_yaml(),
        start_time=started_ms,
    )
    if resumed:
        get_run_logger().info("resumed MLflow run %s of an interrupted attempt", run_id)
    try:
        budget = budget_accounting(probes, n_params, plan.data.sizes, cfg.target_size)
        log_selection(
            tracker,
            run_id,
            data=plan.data,
            probes=probes,
            result=result,
            n_params=n_params,
            ntk=ntk,
            plots=plots,
        )
        log_budget(tracker, run_id, budget, adaptive.run if adaptive else None)
        registration = _register(cfg, tracker, key, run_id, plan, probes, result)
        tracker.end_run(run_id)
    except Exception:
        _mark_failed(tracker, run_id)
        raise
    return SelectionSummary(
        selection_key=key,
        run_id=run_id,
        resumed=resumed,
        tracking_uri=tracker.uri,
        result=result,
        budget=budget,
        adaptive=adaptive.run if adaptive else None,
        registration=registration,
        plot=_keep_plot(plots[0], plan.cache_dir, run_id),
    )


def _register(cfg, tracker, key, run_id, plan: ProbePlan, probes, result: SelectionResult):
    """Register the winner's fine-tuned weights and run the promotion gate (when enabled)."""
    if not cfg.registry.enabled:
        return None
    winner = result.winner
    saved = plan.saved_weights(result.selected, probes[result.selected])
    outcome = register_flow(
        saved.save_dir,
        registered_name=cfg.registry.model_name,
        task_key=cfg.name,
        selection_key=key,
        predicted_loss=winner.predicted_loss,
        interval=list(winner.interval),
        selector=cfg.selector,
        tags={
            **provenance_tags(cfg, plan.data, key),
            T.INTERVAL_LEVEL: result.level,
            T.INTERVAL_METHOD: result.interval_method,
            T.P_BEST: winner.p_best,
        },
        tracking_uri=tracker.uri,
        experiment=cfg.tracking.experiment,
        margin=cfg.registry.margin,
        parent_run_id=run_id,
        lock_dir=str(plan.cache_dir / "locks"),
    )
    return Registration(**outcome, finetune_size=saved.size)


def provenance_tags(cfg: SelectionConfig, data: PreparedData, key: str) -> dict[str, str]:
    """The ``lensllm.*`` provenance tags of a selection's runs and registered version."""
    return {
        T.GIT_COMMIT: git_commit(),
        T.CONFIG_HASH: cfg.config_hash(),
        T.DATA_FINGERPRINT: data.fingerprint,
        T.SELECTION_KEY: key,
        T.TASK: cfg.name,
    }


def _run_params(cfg: SelectionConfig, data: PreparedData, candidates: list[str]) -> dict:
    return {
        "selector": cfg.selector,
        "rank_on": cfg.rank_on,
        "target_size": cfg.target_size,
        "ladder": ",".join(map(str, data.sizes)),
        "dataset": data.source,
        "candidates": ",".join(candidates),
        "probe_method": cfg.probe.method,
    }


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _log_inputs(data: PreparedData, n_params: dict[str, int]) -> None:
    get_run_logger().info(
        "data %s (fingerprint %s); candidates: %s",
        data.source,
        data.fingerprint,
        ", ".join(f"{n} ({p / 1e6:.1f}M)" for n, p in n_params.items()),
    )


def _plots(result, probes, ntk, f_terms) -> list[str]:
    """``curves.png`` (every candidate's curve and prediction), ``ntk_spectrum.png``."""
    out_dir = Path(tempfile.mkdtemp(prefix="lensllm-select-"))
    plots = [plot_selection(result, probes, str(out_dir / "curves.png"))]
    if ntk:
        plots.append(plot_spectra(ntk, f_terms, str(out_dir / "ntk_spectrum.png")))
    return plots


@contextmanager
def _tracking_errors(tracker: Tracker) -> Iterator[None]:
    """An error while talking to a tracking server that is down becomes one clear
    ``TrackingUnavailableError`` (probes are cached: the same command later logs them)."""
    try:
        yield
    except Exception as err:
        unreachable = tracker.unreachable_error()
        if unreachable is not None:
            raise unreachable from err
        raise


def _mark_failed(tracker: Tracker, run_id: str) -> None:
    """Best effort: the parent run of a failed selection ends FAILED (the next attempt of the
    same selection resumes it); a tracking server that is down cannot be told."""
    if tracker.unreachable_error() is not None:
        return
    try:
        tracker.end_run(run_id, "FAILED")
    except Exception as err:  # the original error matters more; say why this one failed
        get_run_logger().warning("could not mark MLflow run %s FAILED: %s", run_id, err)


def _keep_plot(plot: str, cache: Path, run_id: str) -> str:
    dest = cache / "plots" / f"selection-{run_id}.png"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(Path(plot).read_bytes())
    return str(dest)


def _prefect_artifacts(summary: SelectionSummary) -> None:
    result, reg = summary.result, summary.registration
    create_table_artifact(
        result.ranking_rows(),
        key="selection-ranking",
        description=f"Ranking by {result.selector} ({result.rank_on})",
    )
    create_markdown_artifact(
        "\n".join(
            [
                f"# Selected: **{result.selected}**",
                f"- selector: {result.selector}, ranked on {result.rank_on}",
                f"- MLflow run: `{summary.run_id}` in `{display_uri(summary.tracking_uri)}`"
                " (open with `lensllm ui`)",
                f"- registered version: {reg.version if reg else '-'} "
                f"(promoted to champion: {reg.promoted if reg else '-'})",
            ]
        ),
        key="selection-summary",
    )


def flow_with_runner(cfg: SelectionConfig):
    """The select flow with the task runner the config asks for."""
    return select_flow.with_options(task_runner=build_task_runner(cfg.runner))
