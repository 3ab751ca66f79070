"""NTK features (lens_model/ntk.py): the kernel against explicit per-example autograd gradients,
its symmetry and PSD-ness, the seeded random projection, and F against a brute-force matrix
exponential. Tiny Llama + LoRA built in the test (no files, no hub). Then the pipeline's task
(tasks/ntk_features.py): a candidate's NtkResult from its folder and a ProbeSpec, and
candidate_ntk."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from lens_model.ntk import (
    NonFiniteKernelError,
    empirical_ntk,
    f_term,
    ntk_features,
    ntk_spectrum,
    per_example_outputs,
)

N_EXAMPLES = 6


def tiny_llama(dtype: torch.dtype = torch.float64, lora: bool = True) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=300,
    )
    model = LlamaForCausalLM(config).to(dtype)
    if not lora:
        return model
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # non-zero B: with peft's default B = 0 the lora_A gradients vanish at initialisation
        lora_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        return get_peft_model(model, lora_config)


def make_batch(n: int = N_EXAMPLES, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded examples of different lengths, prompt tokens masked (like probe.collate)."""
    gen = torch.Generator().manual_seed(seed)
    width = 12
    input_ids = torch.zeros(n, width, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i in range(n):
        length = 6 + i % 7
        prompt = 2 + i % 3
        ids = torch.randint(1, 300, (length,), generator=gen)
        input_ids[i, :length], mask[i, :length] = ids, 1
        labels[i, prompt:length] = ids[prompt:]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def explicit_outputs_and_grads(model, batch):
    """Reference: one masked forward per example and torch.autograd.grad, no torch.func."""
    params = [p for p in model.parameters() if p.requires_grad]
    outs, rows = [], []
    for i in range(batch["input_ids"].shape[0]):
        logits = model(
            input_ids=batch["input_ids"][i : i + 1],
            attention_mask=batch["attention_mask"][i : i + 1],
        ).logits[0, :-1]
        target = batch["labels"][i, 1:]
        keep = target != -100
        logp = torch.log_softmax(logits, -1)[keep].gather(-1, target[keep][:, None])
        f = logp.mean()
        outs.append(f.detach())
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, params)]))
    return torch.stack(outs).double(), torch.stack(rows).double()


@pytest.fixture(scope="module")
def model():
    return tiny_llama().eval()


@pytest.fixture(scope="module")
def batch():
    return make_batch()


@pytest.fixture(scope="module")
def reference(model, batch):
    return explicit_outputs_and_grads(model, batch)


def rel_frob(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_outputs_match_masked_forward(model, batch, reference):
    f = per_example_outputs(model, batch, chunk_size=4)
    assert f.shape == (N_EXAMPLES,) and f.dtype == torch.float64
    assert torch.allclose(f, reference[0], rtol=1e-10, atol=0)
    assert bool((f < 0).all())  # mean log-likelihoods: the residual r0 = f - 0 is negative


def test_kernel_equals_explicit_gram(model, batch, reference):
    jac = reference[1]
    theta = empirical_ntk(model, batch, chunk_size=4)  # chunks of 4 and 2 examples
    assert theta.shape == (N_EXAMPLES, N_EXAMPLES) and theta.dtype == torch.float64
    assert rel_frob(theta, jac @ jac.T) < 1e-6
    assert torch.equal(theta, theta.T)
    assert float(torch.linalg.eigvalsh(theta).min()) > -1e-9 * float(theta.trace())


def test_kernel_float32_model_close_to_explicit():
    model = tiny_llama(torch.float32).eval()
    batch = make_batch(4, seed=3)
    _, jac = explicit_outputs_and_grads(model, batch)
    assert rel_frob(empirical_ntk(model, batch), jac @ jac.T) < 1e-5


def test_kernel_leaves_training_mode_and_grads_alone(batch):
    model = tiny_llama().train()
    empirical_ntk(model, batch)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_kernel_over_named_and_all_parameters(batch):
    plain = tiny_llama(lora=False).eval()
    names = [n for n, _ in plain.named_parameters() if "layers.1.mlp" in n]
    plain.requires_grad_(False)
    theta_named = empirical_ntk(plain, batch, params=names)
    for name, p in plain.named_parameters():
        p.requires_grad_(name in names)
    _, jac = explicit_outputs_and_grads(plain, batch)
    assert rel_frob(theta_named, jac @ jac.T) < 1e-6
    theta_all = empirical_ntk(plain, batch, params="all")
    assert float(theta_all.trace()) > float(theta_named.trace())  # more parameters, more kernel


def test_projection_is_seeded_and_converges(model, batch, reference):
    exact = reference[1] @ reference[1].T
    p1 = empirical_ntk(model, batch, projection_dim=64, seed=5, chunk_size=4)
    p2 = empirical_ntk(model, batch, projection_dim=64, seed=5, chunk_size=3)
    p3 = empirical_ntk(model, batch, projection_dim=64, seed=6)
    assert torch.allclose(p1, p2, rtol=1e-9)  # same seed: same projection whatever the chunking
    assert not torch.allclose(p1, p3)
    errors = {
        k: np.mean(
            [
                rel_frob(empirical_ntk(model, batch, projection_dim=k, seed=s), exact)
                for s in range(3)
            ]
        )
        for k in (16, 256, 4096)
    }
    assert errors[16] > errors[256] > errors[4096]
    assert errors[4096] < 0.06  # JL: ~ sqrt(2 / k) relative error


def test_f_term_equals_matrix_exponential(model, batch, reference):
    theta = reference[1] @ reference[1].T
    r0 = reference[0]
    for eta, t in ((1e-3, 10.0), (0.05, 3.0), (1.0, 0.5)):
        brute = scipy.linalg.expm(-eta * theta.numpy() * t) @ r0.numpy()
        want = float(brute @ brute)
        assert abs(f_term(theta, r0, eta, t) / want - 1) < 1e-6


def test_f_term_monotone_and_initial_value(reference):
    theta, r0 = reference[1] @ reference[1].T, reference[0]
    values = [f_term(theta, r0, 0.01, t) for t in (0, 1, 10, 100, 1000)]
    assert values[0] == pytest.approx(float(r0 @ r0), rel=1e-12)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < values[0]


def test_f_term_clips_rounding_negative_eigenvalues():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    theta = u @ np.diag([3.0, 1.0, 0.2, 0.0, -1e-12]) @ u.T  # PSD up to rounding
    r0 = rng.standard_normal(5)
    # the clipped direction keeps its residual forever instead of growing exponentially
    want = sum((u[:, k] @ r0) ** 2 for k in (3, 4))
    assert f_term(theta, r0, 1.0, 1e9) == pytest.approx(want, rel=1e-6)


def test_spectrum(reference):
    theta, r0 = reference[1] @ reference[1].T, reference[0]
    spec = ntk_spectrum(theta, r0, eta=0.01, t=5.0)
    lam = spec["eigenvalues"]
    assert np.all(np.diff(lam) <= 0) and lam.min() >= 0
    assert spec["alignment"].sum() == pytest.approx(1.0)
    assert 1.0 <= spec["effective_rank"] <= N_EXAMPLES
    assert spec["trace"] == pytest.approx(float(theta.trace()))
    assert spec["f_term"] == pytest.approx(f_term(theta, r0, 0.01, 5.0))
    assert spec["residual_norm_sq"] == pytest.approx(float(r0 @ r0))
    assert "f_term" not in ntk_spectrum(theta, r0)
    # a rank-one kernel has effective rank 1
    v = np.arange(1.0, 5.0)
    assert ntk_spectrum(np.outer(v, v), v)["effective_rank"] == pytest.approx(1.0)


def test_features_in_one_call(model, batch, reference):
    feats = ntk_features(model, batch, eta=0.01, t=4.0)
    jac = reference[1]
    assert rel_frob(feats["theta"], (jac @ jac.T).numpy()) < 1e-6
    assert feats["f_term"] == pytest.approx(f_term(jac @ jac.T, reference[0], 0.01, 4.0))


def test_bad_input(model, batch):
    with pytest.raises(ValueError, match="no trainable"):
        empirical_ntk(tiny_llama(lora=False).requires_grad_(False), batch)
    with pytest.raises(ValueError, match="params must be"):
        empirical_ntk(model, batch, params="lora")
    with pytest.raises(ValueError, match="unknown parameter names"):
        empirical_ntk(model, batch, params=["nope"])
    left = {k: v.flip(1) for k, v in batch.items()}
    with pytest.raises(ValueError, match="right-padded"):
        empirical_ntk(model, left)
    no_target = dict(batch, labels=torch.full_like(batch["labels"], -100))
    with pytest.raises(ValueError, match="at least one target token"):
        per_example_outputs(model, no_target)
    with pytest.raises(ValueError, match="projection_dim"):
        empirical_ntk(model, batch, projection_dim=0)
    with pytest.raises(ValueError, match="projection_dim"):
        empirical_ntk(model, batch, max_jacobian_bytes=10)
    theta = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="eta"):
        f_term(theta, torch.ones(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="t \\(training steps\\)"):
        f_term(theta, torch.ones(3), 0.1, -1.0)
    with pytest.raises(ValueError, match="theta must be"):
        f_term(theta, torch.ones(4), 0.1, 1.0)


# ---------------------------------------------------------------------------------
# tasks.ntk_features

EXAMPLES = [
    {"prompt": f"Define word {i}:", "target": f" meaning number {i}" + " x" * (i % 3)}
    for i in range(5)
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tasks.models import resolve_candidate

    return resolve_candidate("tiny-llama", cache_dir=tmp_path_factory.mktemp("models"))


def test_compute_ntk_features_gives_the_probes_kernel_spectrum(tiny_dir):
    from tasks.ntk_features import compute_ntk_features
    from tasks.ntk_features import f_term as candidate_f_term
    from tasks.records.schema import NtkResult, ProbeSpec
    from tasks.training.finetune import collate, encode_examples, pad_id, prepare_model

    spec = ProbeSpec(device="cpu", lora_r=4, max_seq_len=32)
    result = compute_ntk_features(tiny_dir, EXAMPLES, spec, threads=1)
    assert isinstance(result, NtkResult)
    assert result.n == len(EXAMPLES) == len(result.eigenvalues) == len(result.alignment)
    assert result.device == "cpu" and result.projection_dim is None
    lam = np.array(result.eigenvalues)
    assert np.all(np.diff(lam) <= 0) and lam.min() >= 0
    assert sum(result.alignment) == pytest.approx(1.0)
    assert result.trace == pytest.approx(lam.sum(), rel=1e-6)
    assert 1.0 <= result.effective_rank <= len(EXAMPLES)
    assert result.seconds > 0 and result.peak_rss_mb > 0
    # the same kernel as lens_model's on the probe's own adapter (seeded like the probe), in
    # fp32 whatever the probes' precision (adapter_only)
    model, tokenizer, _ = prepare_model(tiny_dir, spec.adapter_only(), device="cpu")
    model.set_attn_implementation("eager")
    batch = collate(encode_examples(tokenizer, EXAMPLES, spec.max_seq_len), pad_id(tokenizer))
    theta = empirical_ntk(model, batch)
    r0 = per_example_outputs(model, batch)
    assert np.allclose(lam, np.linalg.eigvalsh(theta.numpy())[::-1], rtol=1e-5, atol=1e-9)
    assert result.residual_norm_sq == pytest.approx(float(r0 @ r0), rel=1e-6)
    # F from the stored spectrum is LensLLM's F on that kernel
    assert candidate_f_term(result, 0.01, 0.0) == pytest.approx(result.residual_norm_sq)
    want = f_term(theta, r0, 0.01, 7.0)
    assert candidate_f_term(result, 0.01, 7.0) == pytest.approx(want, rel=1e-6)
    assert candidate_f_term(result, 0.01, 70.0) <= candidate_f_term(result, 0.01, 7.0)
    # deterministic, and training settings do not enter it (the cache keys on adapter_only)
    again = compute_ntk_features(tiny_dir, EXAMPLES, spec.model_copy(update={"learning_rate": 1}))
    assert again.eigenvalues == pytest.approx(result.eigenvalues, rel=1e-9)
    other_seed = compute_ntk_features(tiny_dir, EXAMPLES, spec.model_copy(update={"seed": 1}))
    assert other_seed.eigenvalues != pytest.approx(result.eigenvalues, rel=1e-6)


def test_compute_ntk_features_projection_and_empty_input(tiny_dir):
    from tasks.ntk_features import compute_ntk_features
    from tasks.records.schema import ProbeSpec

    spec = ProbeSpec(device="cpu", max_seq_len=32)
    projected = compute_ntk_features(tiny_dir, EXAMPLES, spec, projection_dim=4096, threads=1)
    exact = compute_ntk_features(tiny_dir, EXAMPLES, spec, threads=1)
    assert projected.projection_dim == 4096
    assert projected.trace == pytest.approx(exact.trace, rel=0.1)
    with pytest.raises(ValueError, match="probe set is empty"):
        compute_ntk_features(tiny_dir, [], spec)


def test_candidate_ntk_skips_broken_kernels_and_keys_on_the_adapter(tmp_path, monkeypatch, caplog):
    import tasks.ntk_features
    from tasks.records.schema import NtkResult, NtkSpec, ProbeSpec

    calls = []

    def fake_task(path, examples, spec, *, projection_dim, threads, trust_remote_code, candidate):
        calls.append((path, len(examples), spec, projection_dim, trust_remote_code))
        if path == "nan":
            raise NonFiniteKernelError("the kernel has NaN entries")
        if path == "oom":
            raise RuntimeError("DefaultCPUAllocator: not enough memory")
        if path == "bug":
            raise KeyError("a bug")
        return NtkResult(
            n=len(examples),
            eigenvalues=[1.0],
            alignment=[1.0],
            residual_norm_sq=1.0,
            effective_rank=1.0,
            participation_ratio=1.0,
            trace=1.0,
            seconds=0.0,
            peak_rss_mb=0.0,
            device="cpu",
        )

    monkeypatch.setattr(tasks.ntk_features, "cached", lambda task, storage, exclude=(): fake_task)
    spec = ProbeSpec(learning_rate=0.5, epochs=9, lora_r=4)
    ntk = NtkSpec(n_examples=3, projection_dim=16)
    models = {"good": "good", "nan": "nan", "oom": "oom"}
    trust = {"good": True, "nan": False, "oom": False}
    train = [{"prompt": "p", "target": " t"}] * 10
    with caplog.at_level(logging.WARNING):
        out = tasks.ntk_features.candidate_ntk(
            models, trust, train, spec, ntk, threads=1, storage=tmp_path
        )
    assert list(out) == ["good"] and out["good"].n == 3  # the first n_examples examples
    assert "NTK features of nan skipped" in caplog.text
    assert "NTK features of oom skipped" in caplog.text and "lower ntk.n_examples" in caplog.text
    assert calls[0][1:] == (3, spec.adapter_only(), 16, True)
    assert calls[0][2].learning_rate == ProbeSpec().learning_rate and calls[0][2].lora_r == 4
    with pytest.raises(KeyError, match="a bug"):  # anything else is a bug, not a skipped F
        tasks.ntk_features.candidate_ntk(
            {"bug": "bug"}, {"bug": False}, train, spec, ntk, threads=1, storage=tmp_path
        )
    off = NtkSpec(enabled=False)
    assert (
        tasks.ntk_features.candidate_ntk(
            models, trust, train, spec, off, threads=1, storage=tmp_path
        )
        == {}
    )
