"""benchmarks/throughput.py on a CPU without fast bf16: fp32 is measured alone, padded and
bucketed, and the report says why bf16 was left out; with bf16 both precisions are measured."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tasks.training import precision as P

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
NO_BF16 = frozenset({"avx", "avx2", "fma", "f16c"})  # an AVX2-only CPU, such as an AMD EPYC here


def _script():
    spec = importlib.util.spec_from_file_location("throughput", BENCHMARKS / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
