"""A whole selection in MLflow: the parent run with the ranking, the fit parameters, the plots
and the compute spent, and one nested run per candidate with its curve and prediction."""

from __future__ import annotations

from tasks.records import (
    AdaptiveRun,
    Budget,
    CandidateResult,
    NtkResult,
    PreparedData,
    ProbeResult,
    SelectionResult,
)
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker
from tasks.tracking.runs import log_candidate


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
) -> None:
    """Log every candidate (nested runs) and the ranking, fit parameters and plots (parent)."""
    for name, runs in probes.items():
        cand = result.candidates[name]
        log_candidate(
            tracker,
            run_id,
            name,
            runs,
            data,
            prediction=_prediction(cand, result.target_size),
            params={"n_params": n_params[name], "model": name},
            tags={T.DROPPED_REASON: cand.dropped} if cand.dropped else None,
            extra_metrics=ntk_metrics(ntk[name], cand) if name in ntk else None,
            extra_json={"ntk_spectrum.json": ntk[name].model_dump()} if name in ntk else None,
        )
    tracker.log_table(run_id, result.ranking_rows(), "ranking.json")
    tracker.log_json(run_id, result.model_dump(mode="json"), "fit_params.json")
    for plot in plots:
        tracker.log_artifact(run_id, plot)
    tracker.log(run_id, metrics=[("selection_cost", result.cost, 0)])


def log_budget(tracker: Tracker, run_id: str, budget: Budget, adaptive: AdaptiveRun | None):
    """Probe compute on the parent run (parameter x example units, and FLOPs)."""
    tracker.log(run_id, metrics=[(k, float(v), 0) for k, v in budget.model_dump().items()])
    params = {"adaptive": adaptive is not None}
    if adaptive:
        params.update({f"adaptive.{k}": v for k, v in adaptive.settings.items()})
    tracker.log(run_id, params=params)


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
