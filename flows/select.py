"""Selection flow: subsample -> probe -> fit -> select -> MLflow -> registry.

The recipe is :func:`run_selection`; each step is a task (or a small group of tasks) from
``tasks/``, and what flows between them are the records of :mod:`tasks.records.schema`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import SelectionConfig, load_config
from flows.register import register_flow
from flows.runners import build_task_runner, probe_threads
from flows.train import train_flow
from tasks.data import prepare_data_task
from tasks.fit import AdaptiveOutcome, fit_and_select_task
from tasks.models import describe_candidate, resolve_candidate_task
from tasks.ntk_features import candidate_ntk, f_term
from tasks.probing.budget import budget_accounting
from tasks.probing.plan import ProbePlan
from tasks.records.schema import (
    GateInputs,
    NtkResult,
    PreparedData,
    ProbeResult,
    Registration,
    RegistrationRequest,
    SelectionResult,
    SelectionSummary,
    SpectralResult,
    TargetCheck,
)
from tasks.reporting.plots import plot_prediction, plot_selection, plot_spectra
from tasks.runtime.locks import held, lock_path
from tasks.runtime.progress import Progress
from tasks.runtime.provenance import git_commit
from tasks.runtime.result_storage import result_storage
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.runs import finished_selection_run, open_selection_run
from tasks.tracking.secrets import display_uri
from tasks.tracking.selection import (
    check_tags,
    link_registered_version,
    log_budget,
    log_checks,
    log_selection,
    selection_note,
)
from tasks.training.precision import resolved_spec
from tasks.weight_metrics import candidate_spectra


@flow(name="select-model", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def select_flow(
    config_path: str | None = None, overrides: list[str] | None = None
) -> SelectionSummary:
    """Run one selection from a YAML config (``overrides``: ``key.sub=value`` strings)."""
    cfg = load_config(config_path, overrides)
    return run_selection(cfg)


GATE_STEP = "registration and gate"


class StepTimer:
    """Wall time per step, in the order the steps started. A step timed inside another counts
    for itself only: the outer step's time excludes it, so the steps add up to the whole."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._open: list[list] = []  # per open step: its name, the time of the steps inside it

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.seconds.setdefault(name, 0.0)
        self._open.append([name, 0.0])
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] += elapsed - self._open.pop()[1]
            if self._open:
                self._open[-1][1] += elapsed

    def finished(self) -> dict[str, float]:
        """The steps that are over (a step still running has no time yet)."""
        running = {name for name, _ in self._open}
        return {name: s for name, s in self.seconds.items() if name not in running}


@dataclass
class _Run:
    """What the steps of one selection share (the recipe below fills it in)."""

    cfg: SelectionConfig
    tracker: Tracker
    key: str
    started_ms: int
    plan: ProbePlan
    n_params: dict[str, int]
    probes: dict[str, list[ProbeResult]] = field(default_factory=dict)
    adaptive: AdaptiveOutcome | None = None
    ntk: dict[str, NtkResult] = field(default_factory=dict)
    spectral: dict[str, SpectralResult] = field(default_factory=dict)
    result: SelectionResult | None = None
    targets: dict[str, ProbeResult] = field(default_factory=dict)
    checks: list[TargetCheck] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    timer: StepTimer = field(default_factory=StepTimer)

    @functools.cached_property
    def provenance(self) -> dict[str, str]:
        """Computed once, so the run and the registered version carry the same commit."""
        return provenance_tags(self.cfg, self.plan.data, self.key)


def run_selection(cfg: SelectionConfig) -> SelectionSummary:
    """The recipe: validate the data and candidates, then (holding the selection's lock so
    the same selection started twice waits and then takes everything from cache) compute
    each candidate's NTK features and weight spectra, probe, fit, select, train the top
    candidates at the target, track and register."""
    started_ms = int(time.time() * 1000)
    timer = StepTimer()
    # resolved once, here: every probe, the training at the target (a subflow that may run
    # elsewhere), the selection key, the runs and the registered version carry one precision
    cfg = cfg.model_copy(update={"probe": resolved_spec(cfg.probe)})
    cache = Path(cfg.cache_dir).resolve()
    tracker = Tracker.resolve(cfg.tracking.uri, cache)
    # What can fail fails before compute is spent: the data ladder, every candidate, MLflow.
    with timer.step("data and models"):
        data = prepare_data_task(cfg.dataset, cfg.ladder, cfg.target_size)
        models = {
            c.name: resolve_candidate_task(
                c.name, cache_dir=str(cache / "models"), trust_remote_code=c.trust_remote_code
            )
            for c in cfg.candidates
        }
        n_params = {name: int(describe_candidate(p)["n_params"]) for name, p in models.items()}
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
            progress=_progress(cfg, data, n_params),
        )
        run = _Run(cfg, tracker, key, started_ms, plan, n_params, timer=timer)
        with timer.step("NTK"):
            run.ntk = candidate_ntk(
                models, cfg.trust(), data.train, cfg.probe, cfg.ntk, threads=plan.threads,
                storage=plan.storage,
            )  # fmt: skip
        with timer.step("weight spectra"):
            run.spectral = candidate_spectra(models, cfg.spectral, storage=plan.storage)
        with timer.step("probes"):
            run.probes, run.adaptive = _probe(cfg, plan, n_params)
            plan.progress.close()
        with timer.step("fit"):
            run.result = _fit_and_select(run)
        with timer.step("target training"):
            run.targets, run.checks = _validate(run)
        with timer.step("tracking"):  # registration and the gate, inside it, timed apart
            run.plots = _plots(run)
            try:
                with _tracking_errors(tracker):
                    summary = _track_and_register(run)
            finally:  # MLflow holds them now, and the curves plot is kept in the cache
                shutil.rmtree(Path(run.plots[0]).parent, ignore_errors=True)
        summary = summary.model_copy(update={"timings": dict(timer.seconds)})
    _prefect_artifacts(summary)
    get_run_logger().info("time split: %s", summary.time_split())
    return summary


def _progress(cfg: SelectionConfig, data: PreparedData, n_params: dict[str, int]) -> Progress:
    """The plan the progress line counts against: every candidate on the ladder (an adaptive
    run adds the probes it chooses as it goes)."""
    sizes = [] if cfg.adaptive.enabled else [0, *data.sizes]
    plan = {(name, d): float(p * d) for name, p in n_params.items() for d in sizes}
    return Progress(plan, title=f"selection {cfg.name}")


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
        selector=cfg.selector,
    )


def _fit_and_select(run: _Run) -> SelectionResult:
    cfg = run.cfg
    f_terms = f_terms_of(run.ntk, run.probes, cfg.probe.learning_rate)
    return fit_and_select_task(
        run.probes,
        run.n_params,
        f_terms=f_terms or None,
        rank_with_f=cfg.ntk.rank_with_f,
        target_size=cfg.target_size,
        budget=cfg.ladder.budget,
        selector=cfg.selector,
        rank_on=cfg.rank_on,
        seed=cfg.probe.seed,
        adaptive=run.adaptive,
        intervals=cfg.intervals,
        spectral={name: result.summary() for name, result in run.spectral.items()},
    )


def _validate(run: _Run) -> tuple[dict[str, ProbeResult], list[TargetCheck]]:
    """The top ``validate.top_k`` candidates trained at the target (the train flow, as a
    subflow) and each prediction checked against its measurement."""
    result, cfg = run.result, run.cfg
    ranked = [n for n in result.ranking if not result.candidates[n].excluded]
    top = ranked[: cfg.validation.top_k]
    if not top:
        return {}, []
    targets = train_flow(config=cfg.model_dump(mode="json", by_alias=True), candidates=top)
    checks = [target_check(result, targets[name]) for name in top]
    logger = get_run_logger()
    for check in checks:
        logger.info("realized vs predicted: %s", check.summary())
    return targets, checks


def target_check(result: SelectionResult, trained: ProbeResult) -> TargetCheck:
    """A prediction of ``result`` against the measurement of the candidate trained there."""
    cand = result.candidates[trained.candidate]
    return TargetCheck(
        candidate=trained.candidate,
        rank=cand.rank,
        target_size=result.target_size,
        trained_examples=trained.size,
        rank_on=result.rank_on,
        measured_loss=trained.value(result.rank_on),
        predicted_loss=cand.predicted_loss,
        interval_low=cand.interval[0],
        interval_high=cand.interval[1],
        level=result.level,
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


def _track_and_register(run: _Run) -> SelectionSummary:
    """The parent run spans the whole selection (resumed after a crash); registration runs
    inside it, and the run ends FINISHED only when everything is logged. A selection that a
    finished run already holds adds no run: it says which one, and the (idempotent)
    registry step runs again."""
    cfg, tracker, plan = run.cfg, run.tracker, run.plan
    budget = budget_accounting(run.probes, run.n_params, plan.data.sizes, cfg.target_size)
    done = finished_selection_run(tracker, cfg.tracking.experiment, run.key)
    if done is not None:
        get_run_logger().info(
            "MLflow run %s already holds this selection (same config, data and results): "
            "nothing new is logged",
            done,
        )
        with run.timer.step(GATE_STEP):
            registration = _register(run, done)
        _link_version(run, done, registration)
        return _summary(run, done, False, budget, registration, recorded_in=done)
    run_id, resumed = open_selection_run(
        tracker,
        cfg.tracking.experiment,
        f"select-{cfg.name}",
        run.provenance,
        _run_params(cfg, plan.data, list(run.probes)),
        cfg.resolved_yaml(),
        start_time=run.started_ms,
    )
    if resumed:
        get_run_logger().info("resumed MLflow run %s of an interrupted attempt", run_id)
    try:
        log_selection(
            tracker,
            run_id,
            data=plan.data,
            probes=run.probes,
            result=run.result,
            n_params=run.n_params,
            ntk=run.ntk,
            spectral=run.spectral,
            plots=run.plots,
            targets=run.targets,
            checks=run.checks,
        )
        log_budget(tracker, run_id, budget, run.adaptive.run if run.adaptive else None)
        log_checks(tracker, run_id, run.checks)
        with run.timer.step(GATE_STEP):
            registration = _register(run, run_id)
        metrics = [
            (f"time.{step.replace(' ', '_')}_s", s, 0) for step, s in run.timer.finished().items()
        ]
        tracker.log(run_id, metrics=metrics)
        _link_version(run, run_id, registration)
        note = selection_note(run.result, budget, run.checks, registration, cfg.registry.model_name)
        tracker.log(run_id, tags={T.NOTE: note})
        tracker.end_run(run_id)
    except Exception:
        _mark_failed(tracker, run_id)
        raise
    return _summary(run, run_id, resumed, budget, registration)


def _link_version(run: _Run, run_id: str, registration: Registration | None) -> None:
    """The registered version, shown next to the selection run in the MLflow UI's runs table
    (a local store does not record that link itself)."""
    if registration is not None and registration.version:
        name = run.cfg.registry.model_name
        link_registered_version(run.tracker, run_id, name, registration.version)


def _summary(run: _Run, run_id, resumed, budget, registration, recorded_in=None):
    return SelectionSummary(
        selection_key=run.key,
        run_id=run_id,
        resumed=resumed,
        tracking_uri=run.tracker.uri,
        result=run.result,
        budget=budget,
        adaptive=run.adaptive.run if run.adaptive else None,
        registration=registration,
        plot=_keep_plot(run.plots[0], run.plan.cache_dir, run_id),
        checks=run.checks,
        recorded_in=recorded_in,
        spectral=run.spectral,
    )


def _register(run: _Run, run_id: str) -> Registration | None:
    """Register the winner (trained at the target when ``validate.top_k`` >= 1, else its
    largest probe) and run the promotion gate on measured loss (when enabled)."""
    cfg, plan, result = run.cfg, run.plan, run.result
    if not cfg.registry.enabled:
        return None
    winner = result.winner
    trained = run.targets.get(result.selected)
    if trained is None:
        trained = plan.saved_weights(result.selected, run.probes[result.selected])
    check = next((c for c in run.checks if c.candidate == result.selected), None)
    gate = GateInputs(
        test=plan.data.test,
        test_fingerprint=plan.data.test_fingerprint,
        spec=cfg.probe,
        rank_on=cfg.rank_on,
        measurement=trained.measurement(cfg.rank_on),
        margin=cfg.registry.margin,
        min_confidence=cfg.registry.min_confidence,
    )
    request = RegistrationRequest(
        model_dir=trained.save_dir,
        registered_name=cfg.registry.model_name,
        task_key=cfg.name,
        selection_key=run.key,
        predicted_loss=_finite(winner.predicted_loss),
        interval=winner.interval if all(map(math.isfinite, winner.interval)) else None,
        selector=cfg.selector,
        data_fingerprint=plan.data.fingerprint,
        tags=_version_extra_tags(run, check),
        finetune_size=trained.size,
        tracking_uri=run.tracker.uri,
        experiment=cfg.tracking.experiment,
        parent_run_id=run_id,
    )
    return register_flow(request, gate, lock_dir=str(plan.cache_dir / "locks"))


def _version_extra_tags(run: _Run, check: TargetCheck | None) -> dict[str, str]:
    """The provenance, the interval's level and method, P(best) and the winner's check."""
    result = run.result
    tags = {
        **run.provenance,
        T.INTERVAL_LEVEL: result.level,
        T.INTERVAL_METHOD: result.interval_method,
        T.P_BEST: result.winner.p_best,
        **(check_tags(check) if check else {}),
    }
    return {key: str(value) for key, value in tags.items()}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def provenance_tags(cfg: SelectionConfig, data: PreparedData, key: str) -> dict[str, str]:
    """The ``lensllm.*`` provenance tags of a selection's runs and registered version."""
    return {
        T.GIT_COMMIT: git_commit(),
        T.CONFIG_HASH: cfg.config_hash(),
        T.DATA_FINGERPRINT: data.fingerprint,
        T.SELECTION_KEY: key,
        T.TASK: cfg.name,
        T.PRECISION: cfg.probe.precision,
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
        # what the data file held: duplicates and bad rows skipped (dataset.on_bad_rows)
        "data_examples": data.n_available,
        "data_distinct_examples": data.n_distinct,
        "data_groups": data.n_groups,
        "data_bad_rows_skipped": data.skipped_rows,
        "probe_precision": cfg.probe.precision,
    }


def _log_inputs(data: PreparedData, n_params: dict[str, int]) -> None:
    get_run_logger().info(
        "data %s (fingerprint %s): %s examples, %s distinct, %s groups, bad rows skipped: %s; "
        "candidates: %s",
        data.source,
        data.fingerprint,
        data.n_available,
        data.n_distinct,
        data.n_groups,
        data.skipped_rows,
        ", ".join(f"{n} ({p / 1e6:.1f}M)" for n, p in n_params.items()),
    )


def _plots(run: _Run) -> list[str]:
    """``curves.png`` (every candidate's curve and prediction), ``prediction.png`` (the
    winner's prediction against its measurement at the target), ``ntk_spectrum.png``."""
    out_dir = Path(tempfile.mkdtemp(prefix="lensllm-select-"))
    result = run.result
    plots = [plot_selection(result, run.probes, str(out_dir / "curves.png"))]
    check = next((c for c in run.checks if c.candidate == result.selected), None)
    if check is not None:
        winner_probes = run.probes[result.selected]
        plots.append(plot_prediction(result, winner_probes, check, str(out_dir / "prediction.png")))
    if run.ntk:
        f_terms = {n: c.f_term for n, c in result.candidates.items()}
        plots.append(plot_spectra(run.ntk, f_terms, str(out_dir / "ntk_spectrum.png")))
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
