"""Adaptive selection in the live pipeline: Lens over on-demand probes under a compute cap.

Unit tests drive ``LiveProbes`` with an in-memory probe function on synthetic power-law curves
(budget accounting, elimination, settings, divergence, fitting with gaps); the integration test
runs the select flow with ``adaptive.enabled: true`` on tiny models and checks that it spends
fewer probes than the full ladder, within the cap, and that its probes are the full ladder's
cache entries.
"""

from __future__ import annotations

import numpy as np
import pytest

from tasks.fit import fit_and_select
from tasks.probing.adaptive import LiveProbes, adaptive_settings, run_adaptive
from tasks.probing.budget import budget_accounting
from tasks.records.errors import ProbeDivergedError
from tests.conftest import probe_result

LADDER = [32, 64, 128, 256, 512, 1024]
TARGET = 16384
# E + B * d^-alpha per candidate; candidate 2 is best at the target, 0 is best at small sizes.
CURVES = [(1.20, 3.0, 0.30), (1.05, 8.0, 0.40), (0.80, 12.0, 0.45), (1.50, 4.0, 0.25)]
N_PARAMS = [100, 120, 150, 90]


def _curve(i: int, d: int) -> float:
    e, b, alpha = CURVES[i]
    return e + b * (max(d, 1) ** -alpha) if d else e + b


def _fake_submit(calls: list, diverge: tuple | None = None):
    names = [f"m{i}" for i in range(len(CURVES))]

    def submit(name: str, size: int):
        i = names.index(name)
        calls.append((name, size))
        bad = diverge == (name, size)
        loss = float("nan") if bad else _curve(i, size)
        return probe_result(name, size, loss, diverged=bad, flops=6.0 * N_PARAMS[i] * size)

    return names, submit


def test_adaptive_spends_within_the_fraction_and_drops_with_reasons():
    calls: list = []
    names, submit = _fake_submit(calls)
    source = LiveProbes(names, N_PARAMS, LADDER, submit)
    out = run_adaptive(source, budget=LADDER[-1], target_size=TARGET, fraction=0.5)
    probes = source.results()
    n_params = dict(zip(names, N_PARAMS, strict=True))
    acct = budget_accounting(probes, n_params, LADDER, TARGET)
    assert acct.compute_full_ladder == sum(N_PARAMS) * sum(LADDER)
    assert acct.compute_full_finetune_all == sum(N_PARAMS) * TARGET
    assert 0 < acct.compute_spent <= 0.5 * acct.compute_full_ladder
    assert acct.n_probes < len(names) * len(LADDER)
    assert acct.flops_spent == pytest.approx(6.0 * acct.compute_spent)
    # every probe is submitted once (memoised), and the accounting counts exactly those
    assert len(calls) == len(set(calls)) == acct.n_probes
    dropped = out.run.dropped
    assert dropped and all("dropped after size" in r for r in dropped.values())
    result = fit_and_select(
        probes, n_params, target_size=TARGET, budget=LADDER[-1], selector="Lens", adaptive=out
    )
    truth = {n: _curve(i, TARGET) for i, n in enumerate(names)}
    assert result.selected == min(truth, key=truth.get) == "m2"
    assert result.ranking[0] == "m2"
    for name, reason in dropped.items():
        cand = result.candidates[name]
        assert cand.dropped == reason and np.isfinite(cand.predicted_loss)
    # fit_and_select's Cost is the spend relative to fine-tuning everyone on the target
    assert result.cost == pytest.approx(acct.compute_spent / acct.compute_full_finetune_all)


def test_settings_for_a_short_doubling_ladder_and_a_too_small_fraction():
    settings = adaptive_settings([32, 64, 128], 128, 0.5)
    assert settings == {"cost_fraction": 0.5, "first_top": 0.5, "spacing": 2}
    with pytest.raises(ValueError, match="raise adaptive.compute_fraction"):
        adaptive_settings([32, 64, 128], 128, 0.2)


def test_a_diverged_probe_raises_a_clear_error():
    names, submit = _fake_submit([], diverge=("m1", 256))
    source = LiveProbes(names, N_PARAMS, LADDER, submit)
    with pytest.raises(ProbeDivergedError, match="'m1' at 256 examples diverged"):
        run_adaptive(source, budget=LADDER[-1], target_size=TARGET, fraction=0.5)


def test_unknown_size_is_refused():
    names, submit = _fake_submit([])
    with pytest.raises(KeyError, match="not on the ladder"):
        LiveProbes(names, N_PARAMS, LADDER, submit).loss(0, 100)


def test_budget_as_a_fraction_of_full_finetuning_converts_to_the_ladder():
    from flows.config import ConfigError, load_config

    base = ["candidates=[a, b]", "adaptive.enabled=true", "target_size=4096", "ladder.budget=128"]
    cfg = load_config(None, [*base, "adaptive.fraction_of_full_finetune=0.03"])
    ladder = [32, 64, 128]  # 224 examples per candidate; 3 % of 4096 is 122.88
    assert cfg.adaptive.ladder_fraction(4096, ladder) == pytest.approx(122.88 / 224)
    with pytest.raises(ConfigError, match="too small for the ladder"):  # 2 %: no round fits
        load_config(None, [*base, "adaptive.fraction_of_full_finetune=0.02"])
    assert load_config(None, base).adaptive.ladder_fraction(4096, ladder) == 0.5
    big = load_config(None, [*base, "adaptive.fraction_of_full_finetune=0.5"])
    assert big.adaptive.ladder_fraction(4096, ladder) == 1.0  # capped at the whole ladder


def test_config_validates_the_fraction():
    from flows.config import ConfigError, load_config

    cfg = load_config(None, ["candidates=[a, b]", "adaptive.enabled=true"])
    assert cfg.adaptive.enabled and cfg.adaptive.compute_fraction == 0.5
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match="adaptive.compute_fraction"):
            load_config(None, ["candidates=[a, b]", f"adaptive.compute_fraction={bad}"])


@pytest.mark.integration
@pytest.mark.slow
def test_select_flow_adaptive_spends_less_and_shares_the_probe_cache(prefect_harness, tmp_path):
    from tasks.tracking.client import Tracker
    from tests.pipeline.test_select_flow import LADDER as FLOW_LADDER
    from tests.pipeline.test_select_flow import TARGET as FLOW_TARGET
    from tests.pipeline.test_select_flow import (
        _config,
        _probe_task_runs,
        _run,
        _second_candidate,
        _write,
    )

    other = _second_candidate(tmp_path / "cache" / "models", tmp_path / "tiny-llama-seed1234")
    cfg = _config(tmp_path, ["tiny-llama", other], adaptive={"enabled": True})
    state, flow_run_id = _run(_write(tmp_path / "adaptive.yaml", cfg))
    summary = state.result()
    full = len(cfg["candidates"]) * (len(FLOW_LADDER) + 1)
    runs = _probe_task_runs(flow_run_id, None)
    b = summary.budget
    # the selection's probes (the winner's training at the target is the train subflow's)
    assert len(runs) == b.n_probes
    assert 0 < b.n_probes < full
    assert 0 < b.compute_spent <= 0.5 * b.compute_full_ladder
    assert b.flops_spent > 0
    assert summary.selected in cfg["candidates"]
    assert summary.result.ranking[0] == summary.selected
    # the registered model is the winner trained at the target
    assert summary.registration.finetune_size == FLOW_TARGET
    assert summary.registration.version == "1"
    assert "champion" in summary.registration.aliases
    parent = Tracker(cfg["tracking"]["uri"]).client.get_run(summary.run_id)
    assert parent.data.metrics["compute_spent"] == b.compute_spent
    assert parent.data.params["adaptive"] == "true"

    # the full ladder afterwards reuses every adaptive probe from the cache
    cfg["adaptive"] = {"enabled": False}
    cfg["registry"] = {"enabled": False}
    state2, flow_run_id2 = _run(_write(tmp_path / "full.yaml", cfg))
    assert state2.is_completed()
    states = [r.state.name for r in _probe_task_runs(flow_run_id2, full)]
    assert states.count("Cached") == b.n_probes and len(states) == full, states


def test_a_diverged_candidate_is_excluded_and_lens_goes_on_with_the_others():
    from tasks.probing.adaptive import run_adaptive_excluding_diverged

    calls: list = []
    names, submit = _fake_submit(calls, diverge=("m2", 64))  # m2 is the best at the target
    probes, adaptive = run_adaptive_excluding_diverged(
        names,
        N_PARAMS,
        LADDER,
        submit,
        rank_on="bits_per_byte",
        budget=LADDER[-1],
        target_size=TARGET,
        fraction=0.5,
    )
    excluded = adaptive.run.excluded
    assert list(excluded) == ["m2"] and "'m2' at 64 examples diverged" in excluded["m2"]
    assert "m2" not in adaptive.names
    assert any(p.size == 64 and p.diverged for p in probes["m2"])  # spent, kept
    n_params = dict(zip(names, N_PARAMS, strict=True))
    result = fit_and_select(
        probes,
        n_params,
        target_size=TARGET,
        budget=LADDER[-1],
        selector="Lens",
        adaptive=adaptive,
    )
    assert result.selected != "m2" and result.ranking[-1] == "m2"
    assert "excluded" in str(result.candidates["m2"].excluded)
    # the other candidates' probes were read again for the second attempt: same calls,
    # which the real pipeline answers from Prefect's cache
    assert len(set(calls)) < len(calls)


def test_every_candidate_diverging_adaptively_is_a_clear_error():
    from tasks.probing.adaptive import run_adaptive_excluding_diverged

    names = ["a", "b"]

    def submit(name, size):
        return probe_result(name, size, float("nan"), diverged=True)

    with pytest.raises(ProbeDivergedError, match="every candidate has a diverged probe"):
        run_adaptive_excluding_diverged(
            names,
            [1, 1],
            LADDER,
            submit,
            rank_on="bits_per_byte",
            budget=LADDER[-1],
            target_size=TARGET,
            fraction=0.5,
        )


def test_a_probe_flagged_diverged_with_a_finite_loss_is_excluded_too():
    """Training can diverge while the restored best weights still give a finite test loss:
    the flag alone excludes the candidate, in the adaptive run and in the final fit."""
    from tasks.probing.adaptive import run_adaptive_excluding_diverged

    names, fake = _fake_submit([])

    def submit(name: str, size: int):
        res = fake(name, size)
        if (name, size) == ("m2", 64):
            res = res.model_copy(update={"diverged": True})  # the metric stays finite
        return res

    probes, adaptive = run_adaptive_excluding_diverged(
        names,
        N_PARAMS,
        LADDER,
        submit,
        rank_on="bits_per_byte",
        budget=LADDER[-1],
        target_size=TARGET,
        fraction=0.5,
    )
    assert list(adaptive.run.excluded) == ["m2"]
    result = fit_and_select(
        probes,
        dict(zip(names, N_PARAMS, strict=True)),
        target_size=TARGET,
        budget=LADDER[-1],
        selector="Lens",
        adaptive=adaptive,
    )
    assert result.selected != "m2" and result.candidates["m2"].excluded


def test_successive_halving_runs_the_live_loop_within_the_same_cap():
    """``selector: SuccessiveHalving`` with adaptive probing: every candidate at the first
    rung, the better half at twice the data, within the cap Lens gets; the pipeline's result
    ranks the survivor first and states no interval."""
    calls: list = []
    names, submit = _fake_submit(calls)
    source = LiveProbes(names, N_PARAMS, LADDER, submit)
    out = run_adaptive(
        source, budget=LADDER[-1], target_size=TARGET, fraction=0.5, selector="SuccessiveHalving"
    )
    probes = source.results()
    n_params = dict(zip(names, N_PARAMS, strict=True))
    acct = budget_accounting(probes, n_params, LADDER, TARGET)
    assert 0 < acct.compute_spent <= 0.5 * acct.compute_full_ladder
    assert len(calls) == len(set(calls)) == acct.n_probes
    first = min(d for _, d in calls)
    assert sorted(n for n, d in calls if d == first) == names  # everyone at the first rung
    second = sorted({d for _, d in calls})[1]
    assert second == 2 * first and len([n for n, d in calls if d == second]) == 2
    assert out.run.settings == {"cost_fraction": 0.5}
    assert all("not promoted after" in r for r in out.run.dropped.values())
    result = fit_and_select(
        probes,
        n_params,
        target_size=TARGET,
        budget=LADDER[-1],
        selector="SuccessiveHalving",
        adaptive=out,
    )
    promoted = [n for n, d in calls if d == second]
    best = min(promoted, key=lambda n: _curve(names.index(n), second))
    assert result.selected == best == result.ranking[0]
    assert result.interval_method == "none"


def test_nlp_metrics_ranks_by_the_spectral_metrics_in_the_pipeline():
    from tasks.records.errors import ConfigError

    names, submit = _fake_submit([])
    probes = {n: [submit(n, d) for d in [0, *LADDER]] for n in names}
    n_params = dict(zip(names, N_PARAMS, strict=True))
    spectral = {n: {"alpha_weighted": w, "alpha": 3.0, "log_spectral_norm": 1.0}
                for n, w in zip(names, [3.0, 2.0, 4.0, 1.5], strict=True)}  # fmt: skip
    kwargs = {"target_size": TARGET, "budget": LADDER[-1], "selector": "NLPMetrics"}
    result = fit_and_select(probes, n_params, spectral=spectral, **kwargs)
    assert result.selected == "m3" and result.ranking == ["m3", "m1", "m0", "m2"]
    assert result.cost == 0.0 and result.probes_read == []
    del spectral["m2"]
    with pytest.raises(ConfigError, match=r"\['m2'\] have none: set spectral.enabled: true"):
        fit_and_select(probes, n_params, spectral=spectral, **kwargs)
