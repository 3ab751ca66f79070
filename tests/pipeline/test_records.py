"""The typed records between the steps of a selection (tasks/records/schema.py): what a measured
probe
offers the fit (ProbeResult.value/usable) and MLflow (ProbeResult.metrics), and the records'
strictness."""

from __future__ import annotations

import math
import pickle

import pytest
from pydantic import ValidationError

from tasks.records.schema import RANK_KEYS, NtkResult, ProbeResult, ProbeSpec


def measured(**fields) -> ProbeResult:
    """A measured probe with plausible values; ``fields`` override them."""
    values = {
        "candidate": "tiny-llama",
        "size": 64,
        "test_loss": 2.5,
        "test_loss_per_byte": 0.9,
        "test_bits_per_byte": 0.9 / math.log(2),
        "test_tokens": 300,
        "test_bytes": 800,
        "val_loss": 2.4,
        "zero_shot_val_loss": 5.5,
        "train_loss_last": 2.2,
        "steps": 16,
        "best_step": 12,
        "train_tokens": 4000,
        "forward_params": 1000,
        "trainable_params": 100,
        "flops": 6.0 * 1000 * 4000,
        "method": "lora",
        "learning_rate": 2e-3,
        "n_train": 64,
        "n_val": 16,
        "n_test": 16,
        "seed": 3,
        "device": "cpu",
        "dtype": "float32",
        "threads": 2,
        "worker": "host:1",
        "history": [{"step": 0, "val_loss": 5.5, "train_loss": None}],
        "save_dir": "/tmp/x",
        "train_time_s": 1.5,
        "eval_time_s": 0.5,
        "wall_time_s": 2.5,
    }
    return ProbeResult(**{**values, **fields})


def test_value_is_the_ranked_loss():
    result = measured()
    assert result.value("bits_per_byte") == result.test_bits_per_byte
    assert result.value("loss_per_token") == result.test_loss
    assert set(RANK_KEYS) == {"bits_per_byte", "loss_per_token"}
    assert isinstance(measured(test_tokens=7).value("bits_per_byte"), float)


@pytest.mark.parametrize("rank_on", ["bits_per_byte", "loss_per_token"])
def test_usable_means_finite_positive_and_not_diverged(rank_on):
    key = RANK_KEYS[rank_on]
    assert measured().usable(rank_on)
    for bad in (math.nan, math.inf, -math.inf, 0.0, -1.0):
        assert not measured(**{key: bad}).usable(rank_on), bad
    # a probe flagged diverged is not usable even when its loss happens to be finite
    assert not measured(diverged=True).usable(rank_on)
    # only the ranked loss matters
    other = RANK_KEYS["loss_per_token" if rank_on == "bits_per_byte" else "bits_per_byte"]
    assert measured(**{other: math.nan}).usable(rank_on)


def test_metrics_are_every_numeric_field_as_floats():
    result = measured(stopped_early=True)
    metrics = result.metrics()
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["test_loss"] == 2.5 and metrics["test_tokens"] == 300.0
    assert metrics["flops"] == result.flops and metrics["learning_rate"] == 2e-3
    assert metrics["threads"] == 2.0 and metrics["wall_time_s"] == 2.5
    assert metrics["stopped_early"] == 1.0 and metrics["diverged"] == 0.0
    # the subset size is the metric's step and the seed a parameter: neither is a metric;
    # text, lists and unset values are not metrics either
    for key in ("size", "seed", "candidate", "method", "device", "dtype", "worker", "history"):
        assert key not in metrics
    assert "train_fingerprint" not in metrics and "save_dir" not in metrics
    numeric = {
        k
        for k, v in result.model_dump().items()
        if isinstance(v, int | float) and k not in ("size", "seed")
    }
    assert set(metrics) == numeric  # bools (diverged, stopped_early) included as 0/1


def test_metrics_leave_out_unset_values_and_keep_nan():
    zero_shot = measured(
        size=0,
        method="zero-shot",
        train_loss_last=None,
        threads=None,
        test_loss=math.nan,
        diverged=True,
    )
    metrics = zero_shot.metrics()
    assert "train_loss_last" not in metrics and "threads" not in metrics
    assert math.isnan(metrics["test_loss"])  # a diverged probe's NaN is recorded, not hidden
    assert metrics["diverged"] == 1.0


def test_training_steps_is_the_best_step_else_the_steps():
    assert measured(steps=16, best_step=12).training_steps == 12.0
    assert measured(steps=16, best_step=0).training_steps == 16.0


def test_records_are_frozen_strict_and_pickle():
    result = measured()
    with pytest.raises(ValidationError):
        result.test_loss = 1.0
    with pytest.raises(ValidationError, match="subset_size"):
        measured(subset_size=64)  # the old name is an error that names the field
    with pytest.raises(ValidationError, match=r"size\n  Field required"):
        ProbeResult(**{k: v for k, v in measured().model_dump().items() if k != "size"})
    assert pickle.loads(pickle.dumps(result)) == result  # Prefect's result store


def test_probe_spec_defaults_are_the_documented_recipe():
    spec = ProbeSpec()
    assert (spec.method, spec.lora_r, spec.lora_alpha, spec.lora_dropout) == ("lora", 8, 16, 0.0)
    assert spec.target_modules == ("q_proj", "v_proj")
    assert (spec.learning_rate, spec.epochs, spec.early_stopping_patience) == (2e-3, 2, 2)
    assert (spec.batch_size, spec.max_seq_len, spec.max_steps, spec.eval_every) == (
        8,
        48,
        None,
        None,
    )
    assert (spec.seed, spec.device) == (0, "auto")
    assert ProbeSpec(target_modules=["q_proj"]).target_modules == ("q_proj",)  # YAML lists
    assert ProbeSpec(device="cuda:1").device == "cuda:1"


def test_ntk_result_f_term_starts_at_the_residual_and_decays():
    from tasks.ntk_features import f_term

    ntk = NtkResult(
        n=3,
        eigenvalues=[2.0, 1.0, 0.0],
        alignment=[0.5, 0.3, 0.2],
        residual_norm_sq=4.0,
        effective_rank=2.0,
        participation_ratio=1.8,
        trace=3.0,
        seconds=0.1,
        peak_rss_mb=10.0,
        device="cpu",
    )
    assert f_term(ntk, 0.1, 0.0) == pytest.approx(4.0)
    # F = ||r0||^2 sum_k alignment_k exp(-2 eta lambda_k t)
    want = 4.0 * (0.5 * math.exp(-2 * 0.1 * 2.0 * 5) + 0.3 * math.exp(-2 * 0.1 * 1.0 * 5) + 0.2)
    assert f_term(ntk, 0.1, 5.0) == pytest.approx(want)
    assert f_term(ntk, 0.1, 1e6) == pytest.approx(4.0 * 0.2)  # the null direction stays
