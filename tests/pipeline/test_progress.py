"""The selection's progress line: probes done, compute against the plan, the current probe,
an ETA from the probes computed so far; live on a terminal, a plain line per probe elsewhere."""

from __future__ import annotations

import io

import pytest

from tasks.runtime import progress as progress_module
from tasks.runtime.progress import Progress

PLAN = {("a", 0): 0.0, ("a", 32): 32.0, ("a", 64): 64.0, ("b", 32): 96.0}


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    return now


def test_plain_lines_count_probes_compute_and_eta(clock):
    out = io.StringIO()
    p = Progress(PLAN, title="selection demo", stream=out)
    assert not p.live  # a StringIO is not a terminal
    p.running(("a", 0))
    p.finished(("a", 0), 5.0, cached=False)  # zero-shot: no compute, no rate yet
    assert "1/4 probes" in out.getvalue() and "ETA after the first computed probe" in out.getvalue()
    clock[0] += 10
    p.running(("a", 32))
    p.finished(("a", 32), 8.0, cached=False)  # 32 units in 8 s: 4 units per second
    line = out.getvalue().splitlines()[-1]
    assert "2/4 probes" in line and "compute 17% of plan" in line
    assert "ETA 40s" in line  # 160 units left / 4 per s
    assert "elapsed 10s" in line
    p.finished(("a", 64), 100.0, cached=True)  # from cache: spent, but no time
    line = out.getvalue().splitlines()[-1]
    assert "3/4 probes" in line and "ETA 24s" in line  # 96 left at the same rate
    assert len(out.getvalue().splitlines()) == 3  # one line per finished probe, no redraws


def test_live_mode_redraws_one_line_with_a_bar_and_the_current_probe(clock):
    out = io.StringIO()
    p = Progress(PLAN, stream=out, live=True)
    p.running(("b", 32))
    assert out.getvalue().endswith("\r") and "now: b on 32 examples" in out.getvalue()
    p.finished(("b", 32), 10.0, cached=False)
    p.close()
    assert out.getvalue().endswith("\n") and "[" in out.getvalue() and "#" in out.getvalue()


def test_an_adaptive_run_grows_the_plan(clock):
    p = Progress({}, stream=io.StringIO())
    p.add(("a", 32), 32.0)
    p.finished(("a", 32), 4.0, cached=False)
    assert p.eta_seconds() == 0.0 and "1/1 probes" in p.line()
