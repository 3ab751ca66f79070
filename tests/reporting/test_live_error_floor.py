"""benchmarks/live_error_floor.py: the narrowest intervals that hold 90 % of given errors, and
its report on real live tables."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark


def _script():
    return load_benchmark("live_error_floor")


def test_hindsight_half_widths_are_the_narrowest_that_hold_the_level():
    floor = _script()
    errors = np.array([0.05, -0.1, 0.2, -0.4, 0.3, 0.01, -0.02, 0.15, 0.9, -0.25])
    const = floor.hindsight_half_widths(errors, np.ones(10))
    assert np.allclose(const, 0.4)  # nine of ten within 0.4, and not within anything less
    assert np.mean(np.abs(errors) <= const) == 0.9
    assert np.mean(np.abs(errors) <= const * 0.99) < 0.9
    # a scale that follows the errors allows narrower intervals than a constant one
    scales = np.abs(errors) + 0.01
    scaled = floor.hindsight_half_widths(errors, scales)
    assert np.mean(np.abs(errors) <= scaled + 1e-12) >= 0.9
    assert np.median(scaled) < np.median(const)
    assert np.allclose(floor.hindsight_half_widths(errors, np.ones(10), level=0.5), 0.15)
    with pytest.raises(ValueError, match="positive scales"):
        floor.hindsight_half_widths(errors, np.zeros(10))


def test_the_report_on_two_live_tables(tmp_path):
    floor = _script()
    tables = [floor.DEFAULT_TABLES[0], floor.DEFAULT_TABLES[-1]]  # WordNet, next line
    out = tmp_path / "floor.md"
    assert floor.main([*tables, "--out", str(out)]) == 0
    text = out.read_text()
    assert "ZOO-WORDNET" in text and "AUDIT-NEXT-LINE" in text
    frame = floor.loto_rows(tables, 64, 512, floor.load_error_model(floor.PRIOR))
    assert len(frame) == 2 * 4 * 2  # two tables x four candidates x Lens and AtS
    assert set(frame.horizon) == {3.0}  # 64 -> 512
    inside = (frame.lower <= frame.measured) & (frame.measured <= frame.upper)
    assert frame.held.tolist() == inside.tolist()
    assert not frame.held.all()  # on the next-line audit AtS's interval misses a candidate
    assert np.allclose(frame.width, np.log(frame.upper / frame.lower))
    summary = floor.summary(frame)
    assert list(summary.method) == ["Lens", "AtS"]
    for _, row in summary.iterrows():
        assert row["hindsight constant: width"] == pytest.approx(
            2 * np.quantile(np.abs(frame[frame.method == row.method].error), 0.9, method="higher")
        )
        errors = np.abs(frame[frame.method == row.method].error)
        assert row["90th pct abs(e)"] == pytest.approx(np.quantile(errors, 0.9))
        assert row["held by +-0.2"] == pytest.approx(np.mean(errors <= 0.2))
        assert row["LensLLM (LOTO): coverage"] == frame[frame.method == row.method].held.mean()
        assert f"{row['median abs(e)']:.3f}" in text


def test_the_summary_of_known_errors():
    import pandas as pd

    floor = _script()
    errors = [0.1, -0.3, 0.5, 0.05]
    frame = pd.DataFrame(
        {
            "method": "Lens",
            "error": errors,
            "scale": [1.0, 1.0, 2.0, 1.0],
            "held": [True, True, False, True],
            "width": [0.2, 0.6, 0.4, 1.0],
        }
    )
    row = floor.summary(frame).iloc[0]
    assert row["candidates"] == 4
    assert row["median abs(e)"] == pytest.approx(0.2)
    assert row["held by +-0.2"] == 0.5  # 0.1 and 0.05
    assert row["hindsight constant: width"] == pytest.approx(1.0)  # +-0.5 holds all four
    assert row["hindsight scaled: median width"] == pytest.approx(0.6)  # k = 0.3
    assert row["LensLLM (LOTO): coverage"] == 0.75
    assert row["LensLLM (LOTO): median width"] == pytest.approx(0.5)
