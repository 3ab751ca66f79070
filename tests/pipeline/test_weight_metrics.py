"""The weight-spectrum task (tasks/weight_metrics.py): which matrices it reads, its cache (keyed
by the weights, not the folder) and its errors."""

from __future__ import annotations

import shutil

import pytest

from tasks.records.errors import CandidateError
from tasks.records.schema import SpectralSpec
from tasks.weight_metrics import (
    cached_spectral_task,
    candidate_spectra,
    compute_weight_metrics,
    decoder_blocks,
    weights_digest,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tasks.models import resolve_candidate

    return str(resolve_candidate("tiny-llama", cache_dir=tmp_path_factory.mktemp("models")))


def test_the_decoder_linear_layers_and_nothing_else(tiny):
    blocks = list(decoder_blocks(tiny))
    assert len(blocks) == 2  # tiny-llama's two decoder layers
    names = {n.split(".")[-2] for n in blocks[0]}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(n.startswith("model.layers.0.") for n in blocks[0])
    result = compute_weight_metrics("tiny", tiny, weights_digest(tiny), min_tail=10)
    assert len(result.layers) == 14
    assert result.metric("alpha_weighted") == pytest.approx(
        sum(x.alpha_weighted for x in result.layers) / 14
    )
    with pytest.raises(KeyError, match="unknown weight-spectrum metric 'alpha_hat'"):
        result.metric("alpha_hat")


def test_a_folder_without_weights_or_decoder_layers_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(CandidateError, match="holds no \\*.safetensors file"):
        weights_digest(str(tmp_path))
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"encoder.weight": np.ones((4, 4), dtype=np.float32)}, tmp_path / "m.safetensors")
    with pytest.raises(CandidateError, match="no decoder-layer weight matrices"):
        next(decoder_blocks(str(tmp_path)))


@pytest.mark.integration
def test_the_cached_task_hits_for_the_same_weights_and_misses_when_they_change(
    prefect_harness, tiny, tmp_path
):
    import torch
    from prefect import flow
    from safetensors.torch import load_file, save_file

    run = cached_spectral_task(tmp_path / "results")

    @flow
    def spectra(path: str):
        state = run("tiny", path, weights_digest(path), min_tail=10, return_state=True)
        return state.name, state.result()

    first_state, first = spectra(tiny)
    assert first_state == "Completed"
    again_state, again = spectra(tiny)
    assert (again_state, again) == ("Cached", first)
    copy = shutil.copytree(tiny, tmp_path / "copy")
    assert spectra(str(copy))[0] == "Cached"  # same weights elsewhere: the key is the bytes

    file = copy / "model.safetensors"
    weights = load_file(file)
    key = "model.layers.1.mlp.down_proj.weight"
    weights[key] = weights[key] * 2.0
    save_file({k: v.contiguous() for k, v in weights.items()}, file, metadata={"format": "pt"})
    changed_state, changed = spectra(str(copy))
    assert changed_state == "Completed"  # the weights changed: recomputed
    assert changed.weights_sha256 != first.weights_sha256
    before = {x.name: x for x in first.layers}[key]
    after = {x.name: x for x in changed.layers}[key]
    # scaling a matrix by 2 scales its eigenvalues by 4 and leaves alpha alone
    assert after.lambda_max == pytest.approx(4.0 * before.lambda_max, rel=1e-6)
    assert after.alpha == pytest.approx(before.alpha, rel=1e-6)
    assert torch.equal(load_file(tiny + "/model.safetensors")[key], weights[key] / 2.0)

    @flow
    def every_candidate():
        return candidate_spectra(
            {"a": tiny, "b": str(copy)}, SpectralSpec(), storage=tmp_path / "results"
        )

    both = every_candidate()
    assert (both["a"], both["b"]) == (first, changed)
    assert candidate_spectra({"a": tiny}, SpectralSpec(enabled=False), storage=tmp_path) == {}
