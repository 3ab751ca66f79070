"""How far a selection has got: probes done out of the plan, compute spent against the plan,
the probe running now and an ETA that improves as probes finish.

On a terminal it is one live line (a bar redrawn in place on stderr); otherwise (CI, a
deployment's worker log) a plain line per finished probe. Prefect's own logs are untouched.
Compute is counted in parameter x example units, as the budget accounting does, and the ETA
divides the compute left by the rate measured on the probes computed so far (cached probes take
no time and do not count towards the rate).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Progress of a planned set of probes.

    Parameters
    ----------
    plan : dict
        ``(candidate, size) -> compute`` (parameters x examples; zero-shot counts 0) of every
        probe that will run.
    stream : file, optional
        Where to write (default stderr); ``live`` defaults to whether it is a terminal.
    """

    def __init__(
        self,
        plan: dict[tuple[str, int], float],
        *,
        title: str = "selection",
        stream: TextIO | None = None,
        live: bool | None = None,
    ) -> None:
        self.plan = dict(plan)
        self.title = title
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.done: dict[tuple[str, int], float] = {}
        self.current: tuple[str, int] | None = None
        self._computed_units = 0.0
        self._computed_seconds = 0.0
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def add(self, key: tuple[str, int], compute: float) -> None:
        """Add a probe to the plan (an adaptive run decides as it goes)."""
        with self._lock:
            self.plan.setdefault(key, compute)

    def running(self, key: tuple[str, int]) -> None:
        with self._lock:
            self.current = key
            if self.live:
                self._write(self.line(), end="\r")

    def finished(self, key: tuple[str, int], seconds: float, cached: bool) -> None:
        """A probe finished (``cached``: it came from the cache and took no compute)."""
        with self._lock:
            units = self.plan.get(key, 0.0)
            self.done[key] = units
            if not cached and units > 0:
                self._computed_units += units
                self._computed_seconds += seconds
            if self.current == key:
                self.current = None
            self._write(self.line(), end="\r" if self.live else "\n")

    def close(self) -> None:
        if self.live:
            self._write(self.line(), end="\n")

    # -- what is shown ----------------------------------------------------------------------
    @property
    def spent(self) -> float:
        return sum(self.done.values())

    @property
    def planned(self) -> float:
        return sum(self.plan.values())

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate of the probes computed so far (None before any)."""
        left = self.planned - self.spent
        if left <= 0:
            return 0.0
        if self._computed_units <= 0:
            return None
        return left * self._computed_seconds / self._computed_units

    def line(self) -> str:
        n, total = len(self.done), len(self.plan)
        share = self.spent / self.planned if self.planned else 1.0
        eta = self.eta_seconds()
        parts = [
            f"{self.title}: {n}/{total} probes",
            f"compute {share:.0%} of plan",
            f"elapsed {_duration(time.monotonic() - self._started)}",
            f"ETA {_duration(eta)}" if eta is not None else "ETA after the first computed probe",
        ]
        if self.current is not None:
            parts.append(f"now: {self.current[0]} on {self.current[1]} examples")
        text = " | ".join(parts)
        if self.live:
            width = 20
            filled = int(round(width * share))
            text = f"[{'#' * filled}{'.' * (width - filled)}] " + text
        return text

    def _write(self, text: str, end: str) -> None:
        pad = " " * 10 if self.live else ""
        self.stream.write(text + pad + end)
        self.stream.flush()
