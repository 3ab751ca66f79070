"""Measure a model on a test split, example by example (what the promotion gate compares)."""

from __future__ import annotations

from typing import Any

from tasks.records.schema import Example, Measurement, ProbeSpec
from tasks.training.finetune import evaluate_loss
from tasks.training.precision import probe_precision


def measure(
    model: Any,
    tokenizer: Any,
    test: list[Example],
    spec: ProbeSpec,
    *,
    rank_on: str,
    fingerprint: str,
) -> Measurement:
    """``model``'s per-example losses on ``test`` with the probes' loss definition and
    evaluation settings (``spec``'s device, precision, sequence length and batch size)."""
    device, precision = probe_precision(spec)
    model = model.to(device=device, dtype=precision.weights).eval()
    out = evaluate_loss(
        model,
        tokenizer,
        test,
        batch_size=spec.eval_batch_size,
        max_seq_len=spec.max_seq_len,
        autocast_dtype=precision.autocast,
        per_example=True,
    )
    return Measurement.of(
        rank_on, fingerprint, out["example_nll"], out["example_bytes"], out["example_tokens"]
    )


def measure_folder(
    model_dir: str, test: list[Example], spec: ProbeSpec, *, rank_on: str, fingerprint: str
) -> Measurement:
    """:func:`measure` of a saved model folder (safetensors + tokenizer)."""
    from tasks.training.finetune import prepare_model

    model, tokenizer, _ = prepare_model(model_dir, spec, train=False, device="cpu")
    return measure(model, tokenizer, test, spec, rank_on=rank_on, fingerprint=fingerprint)


def measure_registered(
    tracking_uri: str,
    name: str,
    version: str,
    test: list[Example],
    spec: ProbeSpec,
    *,
    rank_on: str,
    fingerprint: str,
) -> Measurement:
    """:func:`measure` of a registered model version, loaded from the registry."""
    from tasks.tracking.client import Tracker
    from tasks.tracking.models import load_transformers_components

    parts = load_transformers_components(Tracker(tracking_uri), f"models:/{name}/{version}")
    return measure(
        parts["model"], parts["tokenizer"], test, spec, rank_on=rank_on, fingerprint=fingerprint
    )
