"""What ``lensllm select`` prints at the end of a selection."""

from __future__ import annotations

import math


def print_ranking(result) -> None:
    """The ranking with each candidate's prediction, interval and P(best)."""
    how = (
        "no intervals"
        if result.interval_method == "none"
        else f"{result.level:.0%} {result.interval_method} intervals; P(best)"
    )
    print(f"\nRanking ({result.rank_on} predicted at {result.target_size} examples; {how}):")
    for row in result.ranking_rows():
        p_best = "" if row["p_best"] is None else f"P(best) {row['p_best']:.2f}"
        low, high = row["interval_low"], row["interval_high"]
        interval = f"[{low:.4g}, {high:.4g}]" if math.isfinite(low + high) else "(no interval)"
        print(
            f"  {row['rank']}. {row['candidate']:<28} {row['predicted_loss']:.4f} "
            f"{interval} {p_best} {row['note']}"
        )
    print(f"  intervals rest on: {result.interval_basis}")
    print(f"Selected: {result.selected}")


def print_summary(summary) -> None:
    """What ``lensllm select`` prints at the end: ranking, compute, registry, where to look."""
    result = summary.result
    print_ranking(result)
    b = summary.budget
    mode = "adaptive (Lens)" if summary.adaptive else "full ladder"
    print(
        f"Probe compute ({mode}, parameters x examples): {b.compute_spent:.4g} spent, "
        f"{b.ladder_share:.1%} of the full ladder ({b.compute_full_ladder:.4g}), "
        f"{b.full_finetune_share:.2%} of fine-tuning every candidate on the target "
        f"({b.compute_full_finetune_all:.4g}); {b.n_probes} probes, {b.flops_spent:.3g} FLOPs"
    )
    if summary.recorded_in:
        print(f"Nothing new logged: MLflow run {summary.recorded_in} already holds this selection")
    print(f"Curve plot: {summary.plot}")
    print(mlflow_link(summary.tracking_uri, summary.run_id))
    if summary.timings:
        print(f"Time: {summary.time_split()}")
    # last, what a reader wants to know: was the prediction right, and what did the gate do
    for check in summary.checks:
        print(f"Realized vs predicted: {check.summary()}")
    if not summary.checks:
        print("Realized vs predicted: not checked (validate.top_k: 0)")
    reg = summary.registration
    if reg is None:
        print("Registry: disabled (registry.enabled: false)")
    else:
        print(
            f"Registered version {reg.version} (the winner trained on {reg.finetune_size} "
            f"examples) with aliases {reg.aliases}"
        )
        print(f"Gate: {reg.verdict}: {reg.reason}")


def mlflow_link(tracking_uri: str, run_id: str) -> str:
    """Where to see the run: its page in the MLflow UI, opened as model training (MLflow 3's
    UI opens experiments in GenAI mode unless the link says otherwise)."""
    from tasks.tracking.client import Tracker
    from tasks.tracking.secrets import display_uri

    experiment = Tracker(tracking_uri).client.get_run(run_id).info.experiment_id
    page = f"#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow run: {display_uri(tracking_uri).rstrip('/')}/{page}"
    return (
        f"MLflow run: http://127.0.0.1:5000/{page} after `lensllm ui` "
        f"(store {display_uri(tracking_uri)})"
    )
