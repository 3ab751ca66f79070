"""benchmarks/throughput.py on a CPU without fast bf16: fp32 is measured alone, padded and
bucketed, and the report says why bf16 was left out; with bf16 both precisions are measured."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tasks.training import precision as P
from tests.benchmark_scripts import BENCHMARKS, load_benchmark

DEMO = str(BENCHMARKS.parent / "configs" / "demo.yaml")
NO_BF16 = frozenset({"avx", "avx2", "fma", "f16c"})  # an AVX2-only CPU, such as an AMD EPYC here


def _script():
    return load_benchmark("throughput")


@pytest.mark.parametrize(
    ("flags", "measured"),
    [(NO_BF16, ["fp32"]), (frozenset({"avx512f", "avx512_bf16"}), ["fp32", "bf16"])],
)
def test_the_precisions_measured_are_those_a_selection_here_could_use(monkeypatch, flags, measured):
    monkeypatch.setattr(P, "cpu_flags", lambda: flags)
    throughput = _script()
    base = throughput.ProbeSpec(device="cpu")
    specs, left_out = throughput.usable_precisions(base)
    assert list(specs) == measured
    assert all(spec.precision == name for name, spec in specs.items())
    if measured == ["fp32"]:
        assert "amx_bf16" in left_out  # the selection's own reason
    else:
        assert left_out is None


def test_without_bf16_fp32_is_measured_alone_and_the_report_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(P, "cpu_flags", lambda: NO_BF16)
    throughput = _script()
    out = tmp_path / "throughput.md"
    result = throughput.main(
        [
            *("--model", "tiny-llama", "--steps", "1", "--rounds", "1"),
            *("--probe-size", "8", "--peak-repeats", "1", "--threads", "1"),
            *("--out", str(out)),
        ]
    )
    assert set(result["peaks"]) == {"fp32"}
    assert [r["variant"] for r in result["rows"]] == ["fp32 padded", "fp32 bucketed"]
    assert [o["precision"] for o in result["overhead"]] == ["fp32"]
    bucketed, padded = result["rows"][1], result["rows"][0]
    assert 0 <= bucketed["padding"] <= padded["padding"] < 1  # the tiny tokenizer fills 40 tokens
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in result["rows"])
    report = out.read_text()
    assert "bf16 left out" in report and "| bf16" not in report
    assert "| fp32 bucketed |" in report


def _precision_check():
    return load_benchmark("precision_check")


def _summary(seconds: float, loss: float) -> SimpleNamespace:
    """What the report reads of a SelectionSummary (a unit-test double; the script's real
    runs are recorded under benchmarks/results/)."""
    winner = SimpleNamespace(predicted_loss=loss)
    check = SimpleNamespace(candidate="a", measured_loss=loss * 1.02)
    return SimpleNamespace(
        result=SimpleNamespace(ranking=["a", "b"], winner=winner),
        selected="a",
        checks=[check],
        timings={"probes": seconds, "target training": seconds / 2},
    )


def test_the_precision_check_without_bf16_compares_the_fp32_paths_and_says_why(monkeypatch):
    check = _precision_check()
    monkeypatch.setattr(P, "cpu_flags", lambda: NO_BF16)
    precisions, left_out = check.usable_precisions(DEMO)
    assert precisions == ("fp32",) and "amx_bf16" in left_out
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert check.usable_precisions(DEMO) == (("fp32", "bf16"), None)

    results = {"fp32": {"summary": _summary(100.0, 0.9), "probes": {("a", 32): 1.1}}}
    baseline = {
        "rev": "f" * 40,
        "timings": {"probes": 150.0, "target training": 75.0},
        "ranking": ["a", "b"],
        "selected": "a",
        "predicted": 0.95,
        "measured": 0.99,
    }
    report = check.markdown("configs/demo.yaml", results, baseline, left_out)
    assert "bf16 left out" in report and "bf16 bits/byte" not in report
    assert "| fp32 before | fp32 |" in report
    assert "fp32 now over fp32 before the throughput work" in report and "1.50x" in report
    assert "Same ranking and winner: yes." in report
