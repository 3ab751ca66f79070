"""A whole selection in MLflow: the parent run with the ranking, the fit parameters, the plots
and the compute spent, and one nested run per candidate with its curve and prediction."""

from __future__ import annotations

import math

from tasks.records.schema import (
    NO_INTERVAL,
    AdaptiveRun,
    Budget,
    CandidateResult,
    NtkResult,
    PreparedData,
    ProbeResult,
    Registration,
    SelectionResult,
    SpectralResult,
    TargetCheck,
)
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.runs import dataset_input, log_candidate


def log_selection(
    tracker: Tracker,
    run_id: str,
    *,
    data: PreparedData,
    probes: dict[str, list[ProbeResult]],
    result: SelectionResult,
    n_params: dict[str, int],
    ntk: dict[str, NtkResult],
    plots: list[str],
    targets: dict[str, ProbeResult] | None = None,
    spectral: dict[str, SpectralResult] | None = None,
    checks: list[TargetCheck] | None = None,
) -> None:
    """Log every candidate (nested runs; a candidate trained at the target gets that point on
    its curve too, and its check as ``target.*`` metrics and tags on its own run, so the live
    record counts every checked candidate, not only the winner; its NTK features and weight
    spectra) and the ranking, fit parameters and plots (parent)."""
    targets, spectral = targets or {}, spectral or {}
    checked = {c.candidate: c for c in checks or []}
    for name, runs in probes.items():
        cand = result.candidates[name]
        check = checked.get(name)
        extra = ntk_metrics(ntk[name], cand) if name in ntk else []
        extra_tables = {}
        if name in spectral:
            extra += spectral_metrics(spectral[name])
            extra_tables["weight_spectra.json"] = spectral_rows(spectral[name])
        tags = {T.DROPPED_REASON: cand.dropped} if cand.dropped else {}
        if check is not None:
            extra += check_metrics(check)
            tags.update(check_tags(check))
        log_candidate(
            tracker,
            run_id,
            name,
            [*runs, targets[name]] if name in targets else runs,
            data,
            prediction=_prediction(cand, result.target_size),
            params={"n_params": n_params[name], "model": name},
            tags=tags or None,
            extra_metrics=extra or None,
            extra_json={"ntk_spectrum.json": ntk[name].model_dump()} if name in ntk else None,
            extra_tables=extra_tables,
        )
    tracker.log_inputs(run_id, selection_inputs(data))
    tracker.log_table(run_id, result.ranking_rows(), "ranking.json")
    tracker.log_json(run_id, result.model_dump(mode="json"), "fit_params.json")
    for plot in plots:
        tracker.log_artifact(run_id, plot)
    tracker.log(
        run_id,
        metrics=[("selection_cost", result.cost, 0)],
        tags={T.CANDIDATE_SELECTED: result.selected},
    )


def log_budget(tracker: Tracker, run_id: str, budget: Budget, adaptive: AdaptiveRun | None):
    """Probe compute on the parent run (parameter x example units, and FLOPs)."""
    tracker.log(run_id, metrics=[(k, float(v), 0) for k, v in budget.model_dump().items()])
    params = {"adaptive": adaptive is not None}
    if adaptive:
        params.update({f"adaptive.{k}": v for k, v in adaptive.settings.items()})
    tracker.log(run_id, params=params)


def selection_inputs(data: PreparedData):
    """The selection's data on its parent run: the training pool the ladder and the target
    training draw from, and the test split every probe is measured on."""
    name = data.dataset_name
    return [
        dataset_input(f"{name}-train", data.fingerprint, len(data.train), data.source, "training"),
        dataset_input(
            f"{name}-test", data.test_fingerprint, len(data.test), data.source, "testing"
        ),
    ]


def link_registered_version(tracker: Tracker, run_id: str, model_name: str, version: str) -> None:
    """Show the registered version next to the selection run in the MLflow UI's runs table:
    the run's logged model that the version was registered from is tagged with it
    (:meth:`Tracker.link_model_version`)."""
    client = tracker.client
    registered = client.get_model_version(model_name, version)
    for output in client.get_run(run_id).outputs.model_outputs:
        logged = client.get_logged_model(output.model_id)
        if output.model_id == registered.model_id or logged.artifact_location == registered.source:
            tracker.link_model_version(output.model_id, model_name, version)


def selection_note(
    result: SelectionResult,
    budget: Budget,
    checks: list[TargetCheck],
    registration: Registration | None,
    model_name: str,
) -> str:
    """The decision in one paragraph: the run's description in the MLflow UI."""
    winner = result.winner
    lo, hi = winner.interval
    unit = result.rank_on.replace("_", " ")
    text = (
        f"**{result.selector} selected `{result.selected}`**: predicted {winner.predicted_loss:.4f}"
        f" {unit} at {result.target_size} examples ("
        + (
            f"{result.level:.0%} {result.interval_method} interval {lo:.4g} to {hi:.4g}"
            if math.isfinite(lo) and math.isfinite(hi)
            else NO_INTERVAL
        )
    )
    if winner.p_best is not None:
        text += f"; probability of being the best {winner.p_best:.2f}"
    text += ")."
    others = [n for n in result.ranking if n != result.selected]
    if others:
        second = result.candidates[others[0]]
        text += f" Runner-up: `{others[0]}`, predicted {second.predicted_loss:.4f}."
    text += (
        f" Probe compute: {budget.full_finetune_share:.2%} of fine-tuning every candidate on the"
        f" target ({budget.n_probes} probes)."
    )
    check = next((c for c in checks if c.candidate == result.selected), None)
    if check is not None:
        text += (
            f" Trained at the target ({check.trained_examples} examples) it measured "
            f"{check.measured_loss:.4f}: log error {check.log_error:+.3f}, {check.verdict}."
        )
    if registration is not None and registration.version:
        verdict = registration.verdict
        if registration.already_registered:
            verdict = f"gate {verdict}"
        text += (
            f" Registered as `{model_name}` version {registration.version}, {verdict}: "
            f"{registration.reason}"
        )
    return text


def check_metrics(check: TargetCheck) -> list[tuple[str, float, int]]:
    """The realized-vs-predicted check as metrics (step = the target size)."""
    values = {
        "measured_loss": check.measured_loss,
        "predicted_loss": check.predicted_loss,
        "interval_low": check.interval_low,
        "interval_high": check.interval_high,
        "level": check.level,
        "log_error": check.log_error,
        "abs_log_error": abs(check.log_error),
        "interval_held": math.nan if check.held is None else float(check.held),
        "trained_examples": check.trained_examples,
    }
    return [(f"target.{k}", float(v), check.target_size) for k, v in values.items()]


def check_tags(check: TargetCheck) -> dict[str, str]:
    """A check as tags (its candidate's run; the winner's also on the parent run and the
    registered version)."""
    return {
        T.TARGET_MEASURED_LOSS: repr(check.measured_loss),
        T.TARGET_PREDICTED_LOSS: repr(check.predicted_loss),
        T.TARGET_LOG_ERROR: repr(check.log_error),
        T.TARGET_INTERVAL_HELD: {True: "true", False: "false"}.get(check.held, "no interval"),
        T.TARGET_EXAMPLES: str(check.trained_examples),
    }


def log_checks(tracker: Tracker, run_id: str, checks: list[TargetCheck]) -> None:
    """The selection's checks on the parent run: the winner's as ``target.*`` metrics and
    tags, every checked candidate in ``checks.json`` (each candidate's run carries its own:
    :func:`log_selection`)."""
    if not checks:
        return
    winner = min(checks, key=lambda c: c.rank)
    tracker.log(run_id, metrics=check_metrics(winner), tags=check_tags(winner))
    tracker.log_json(
        run_id,
        [c.model_dump() | {"log_error": c.log_error, "held": c.held} for c in checks],
        "checks.json",
    )


def _prediction(cand: CandidateResult, target_size: int) -> dict:
    return {
        "target_size": target_size,
        "predicted_loss": cand.predicted_loss,
        "interval_low": cand.interval[0],
        "interval_high": cand.interval[1],
        "rank": cand.rank,
        "dropped": cand.dropped,
        "excluded": cand.excluded,
        "fit_converged": cand.fit_converged,
        "fit_warnings": cand.fit_warnings,
        "laws": {name: law.model_dump() for name, law in cand.laws.items()},
    }


def ntk_metrics(feats: NtkResult, cand: CandidateResult) -> list[tuple[str, float, int]]:
    """Spectrum (step = eigenvalue index), alignment, F and its cost, for a candidate run."""
    scalars = {
        "f_term": cand.f_term,
        "effective_rank": feats.effective_rank,
        "participation_ratio": feats.participation_ratio,
        "trace": feats.trace,
        "residual_norm_sq": feats.residual_norm_sq,
        "seconds": feats.seconds,
        "peak_rss_mb": feats.peak_rss_mb,
    }
    metrics = [(f"ntk.{k}", float(v), 0) for k, v in scalars.items() if v is not None]
    metrics += [("ntk.eigenvalue", float(v), k) for k, v in enumerate(feats.eigenvalues)]
    metrics += [("ntk.alignment", float(v), k) for k, v in enumerate(feats.alignment)]
    return metrics


def spectral_metrics(spectral: SpectralResult) -> list[tuple[str, float, int]]:
    """A candidate's weight-spectrum metrics: the model-level means (``spectral.<metric>``),
    the matrix count and the time it took (step 0)."""
    values = {
        **spectral.summary(),
        "n_matrices": len(spectral.layers),
        "seconds": spectral.seconds,
    }
    return [(f"spectral.{k}", float(v), 0) for k, v in values.items()]


def spectral_rows(spectral: SpectralResult) -> list[dict]:
    """Every weight matrix's metrics, one row each (the ``weight_spectra.json`` table)."""
    return [layer.model_dump() for layer in spectral.layers]
