"""The compute a selection spends, against the full ladder and against fine-tuning every
candidate at the target: what every selection reports, adaptive or not."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.records.schema import Budget, ProbeResult


def budget_accounting(
    probes: dict[str, list[ProbeResult]],
    n_params: dict[str, int],
    ladder: Sequence[int],
    target_size: int,
) -> Budget:
    """Probe compute in parameter x example units (the replay Cost's numerator), plus FLOPs:
    the probes run (zero-shot is free), every candidate at every positive ladder size, and
    every candidate fine-tuned on ``target_size`` examples."""
    spent = sum(n_params[n] * p.size for n, runs in probes.items() for p in runs)
    positive = sum(int(d) for d in ladder if d > 0)
    return Budget(
        compute_spent=float(spent),
        compute_full_ladder=float(sum(n_params.values()) * positive),
        compute_full_finetune_all=float(sum(n_params.values()) * target_size),
        flops_spent=float(sum(p.flops for runs in probes.values() for p in runs)),
        n_probes=sum(len(runs) for runs in probes.values()),
    )
