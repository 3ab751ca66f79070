"""probe.precision (auto resolves by capability, fp32/bf16 overrides, the CUDA path, a clear
error without bf16), what bf16 keeps in fp32, the precision in the probe's cache key, and
length-bucketed batches with target-only logits leaving every example's loss unchanged."""

from __future__ import annotations

import pytest
import torch

from tasks.models import resolve_candidate
from tasks.probing.plan import NOT_IN_CACHE_KEY, ProbePlan
from tasks.probing.probe import run_probe
from tasks.records.errors import LensLLMUserError
from tasks.records.schema import ProbeData, ProbeSpec
from tasks.runtime.cache import code_keyed
from tasks.training import precision as P
from tasks.training.finetune import (
    IGNORE_INDEX,
    _batch_nll_rows,
    collate,
    encode_examples,
    padding_share,
    prepare_model,
    train_batches,
    train_step,
)

WORDS = ["cat", "dog", "sun", "tree", "bird", "fish", "moon", "star"]
# prompts and targets of varied lengths, so batches need padding
ROWS = [
    {"prompt": f"Q{i}: say" + " again" * (i % 5), "target": f" {WORDS[i % 8]}" * (1 + i % 7)}
    for i in range(40)
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return resolve_candidate("tiny-llama", cache_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU that reports AVX512-BF16 (bf16 itself runs on any CPU, only slower)."""
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


@pytest.mark.parametrize(
    ("flags", "requested", "expected"),
    [
        ({"avx512f", "amx_tile", "amx_bf16"}, "auto", "bf16"),
        ({"avx512f", "avx512_bf16"}, "auto", "bf16"),
        ({"avx2", "avx512f", "avx512_fp16"}, "auto", "fp32"),  # no bf16 flag: fp32
        (set(), "auto", "fp32"),
        ({"amx_bf16"}, "fp32", "fp32"),  # the override wins
        ({"amx_bf16"}, "bf16", "bf16"),
    ],
)
def test_auto_resolves_by_the_cpu_flags_and_can_be_overridden(
    monkeypatch, flags, requested, expected
):
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))
    cpu = ProbeSpec(device="cpu", precision=requested)
    assert P.resolve_precision(requested, torch.device("cpu")) == expected
    assert P.resolved_spec(cpu).precision == expected
    assert P.probe_precision(cpu)[1].name == expected


def test_this_machines_flags_are_read_not_assumed():
    with open("/proc/cpuinfo") as f:
        line = next(ln for ln in f if ln.startswith("flags"))
    assert P.cpu_flags() == frozenset(line.split(":", 1)[1].split())


def test_bf16_without_it_is_a_clear_user_error(monkeypatch):
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    spec = ProbeSpec(device="cpu", precision="bf16")
    with pytest.raises(LensLLMUserError, match=r"probe\.precision: bf16 .* set probe\.precision"):
        P.resolved_spec(spec)
    with pytest.raises(LensLLMUserError, match="no amx_bf16 or avx512_bf16"):
        run_probe("unused", ProbeData(source="t", train=[], val=[], test=ROWS[:2]), spec)


@pytest.mark.parametrize("bf16", [True, False])
def test_the_cuda_path_resolves_with_the_same_code(monkeypatch, bf16):
    """CUDA simulated, so this runs on every machine: what the code asks torch is answered as
    a bf16 GPU would (or an older one without bf16); the real-GPU test (marked gpu) is below."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"amx_bf16"}))  # not asked for CUDA
    device, lora = P.probe_precision(ProbeSpec())  # device: auto
    assert device.type == "cuda"
    assert lora == (P.Precision("bf16", weights=torch.bfloat16) if bf16 else P.Precision("fp32"))
    full = P.probe_precision(ProbeSpec(method="full"))[1]
    assert full == (P.Precision("bf16", autocast=torch.bfloat16) if bf16 else P.Precision("fp32"))
    if not bf16:
        with pytest.raises(LensLLMUserError, match="this GPU has no fast bf16"):
            P.resolved_spec(ProbeSpec(device="cuda", precision="bf16"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_probe_on_a_real_gpu_runs_in_bf16(tiny):
    data = ProbeData(source="t", train=ROWS[:16], val=ROWS[16:24], test=ROWS[24:])
    res = run_probe(tiny, data, ProbeSpec(device="cuda", epochs=1), progress=False)
    assert (res.precision, res.dtype) == ("bf16", "bfloat16-weights")


def test_the_precision_is_in_the_probe_cache_key_and_a_plan_resolves_it(monkeypatch, tmp_path):
    policy = code_keyed(run_probe, exclude=NOT_IN_CACHE_KEY)

    def key(spec: ProbeSpec) -> str:
        inputs = {"model_dir": "m", "spec": spec, "threads": 1, "progress": False}
        return policy.compute_key(task_ctx=None, inputs=inputs, flow_parameters={})

    fp32, bf16 = ProbeSpec(precision="fp32"), ProbeSpec(precision="bf16")
    assert key(fp32) != key(bf16)  # a changed precision misses the cache
    assert key(fp32) == key(ProbeSpec(precision="fp32"))
    for flags, expected in (({"amx_bf16"}, "bf16"), (set(), "fp32")):
        monkeypatch.setattr(P, "cpu_flags", lambda flags=flags: frozenset(flags))
        plan = ProbePlan(None, {}, {}, ProbeSpec(device="cpu"), 1, tmp_path, None)
        assert plan.spec.precision == expected  # what every submitted probe's key holds


def test_lora_in_bf16_keeps_adapter_optimizer_and_loss_in_fp32(tiny, bf16_cpu):
    spec = ProbeSpec(device="cpu", precision="bf16")
    model, tokenizer, _ = prepare_model(tiny, spec)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = [p for p in model.parameters() if p.requires_grad]
    assert frozen == {torch.bfloat16} and {p.dtype for p in trained} == {torch.float32}
    optimizer = torch.optim.AdamW(trained, lr=1e-3)
    batch = collate(encode_examples(tokenizer, ROWS[:4], 32), tokenizer.eos_token_id)
    nll, _, _ = _batch_nll_rows(model, batch, None, per_example=False)
    assert nll.dtype == torch.float32
    train_step(model, batch, optimizer)
    states = [s for p in trained for s in optimizer.state[p].values() if s.dim()]
    assert states and {s.dtype for s in states} == {torch.float32}


def test_full_in_bf16_is_autocast_over_fp32_master_weights(tiny, bf16_cpu):
    spec = ProbeSpec(device="cpu", precision="bf16", method="full")
    device, precision = P.probe_precision(spec)
    assert precision.autocast == torch.bfloat16 and precision.label == "bfloat16-autocast"
    model, _, _ = prepare_model(tiny, spec)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_bf16_probe_records_its_precision_and_trains(tiny, bf16_cpu):
    data = ProbeData(source="t", train=ROWS[:16], val=ROWS[16:24], test=ROWS[24:])
    fp32 = run_probe(tiny, data, ProbeSpec(device="cpu", precision="fp32", epochs=2), threads=1)
    bf16 = run_probe(tiny, data, ProbeSpec(device="cpu", precision="bf16", epochs=2), threads=1)
    assert (fp32.precision, fp32.dtype) == ("fp32", "float32")
    assert (bf16.precision, bf16.dtype) == ("bf16", "bfloat16-weights")
    assert bf16.test_loss < bf16.zero_shot_val_loss
    assert bf16.test_bits_per_byte == pytest.approx(fp32.test_bits_per_byte, rel=0.05)


def _reference_nll(model, example) -> float:
    """The loss as defined (module docstring of finetune): one example alone, the full logits,
    next-token NLL summed over the target tokens and EOS."""
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    labels = torch.tensor(example.labels[1:])
    return float(
        torch.nn.functional.cross_entropy(
            logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"
        )
    )


def test_bucketed_batches_leave_every_examples_loss_as_one_at_a_time(tiny):
    model, tokenizer, _ = prepare_model(tiny, ProbeSpec(device="cpu", precision="fp32"))
    model.eval()
    encoded = encode_examples(tokenizer, ROWS, 32)
    batches = train_batches(encoded, 8, seed=0, epoch=0, pad_token_id=tokenizer.eos_token_id)
    got = []
    with torch.no_grad():
        for batch in batches:
            got += _batch_nll_rows(model, batch, None, per_example=True)[2]
    # which example is in which row: match each row back by its token ids
    rows = [
        tuple(r[m.bool()].tolist())
        for b in batches
        for r, m in zip(b["input_ids"], b["attention_mask"], strict=True)
    ]
    by_ids = {tuple(e.input_ids): e for e in encoded}
    assert sorted(rows) == sorted(by_ids)  # every example once
    expected = [_reference_nll(model, by_ids[r]) for r in rows]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_bucketing_cuts_the_padding_and_still_shuffles(tiny):
    tokenizer = prepare_model(tiny, ProbeSpec(device="cpu", precision="fp32"), train=False)[1]
    encoded = encode_examples(tokenizer, ROWS * 4, 32)
    pad = tokenizer.eos_token_id
    bucketed = train_batches(encoded, 8, seed=0, epoch=0, pad_token_id=pad)
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(0)).tolist()
    plain = [collate([encoded[i] for i in order[s : s + 8]], pad) for s in range(0, len(order), 8)]
    assert padding_share(bucketed) < 0.05 < padding_share(plain)
    again = train_batches(encoded, 8, seed=0, epoch=0, pad_token_id=pad)
    other = train_batches(encoded, 8, seed=0, epoch=1, pad_token_id=pad)
    first = [b["input_ids"].tolist() for b in bucketed]
    assert first == [b["input_ids"].tolist() for b in again]  # seeded
    assert first != [b["input_ids"].tolist() for b in other]  # a new epoch, a new order


def test_eager_attention_only_for_bf16_on_the_cpu_at_probe_lengths(bf16_cpu):
    from tasks.training.finetune import attention_choice

    eager = {"attn_implementation": "eager"}
    assert attention_choice(ProbeSpec(device="cpu", precision="bf16", max_seq_len=40)) == eager
    assert attention_choice(ProbeSpec(device="cpu", precision="fp32", max_seq_len=40)) == {}
    assert attention_choice(ProbeSpec(device="cpu", precision="bf16", max_seq_len=1024)) == {}
