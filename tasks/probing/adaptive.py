"""Adaptive probing in the live pipeline: ``Lens`` (or its peer ``SuccessiveHalving``, when
that is the configured selector) reads real fine-tuning probes on demand.

``LiveProbes`` is a ``lens_model.selectors.ProbeSource`` whose ``loss(model, size)`` runs (or
reads from the Prefect cache) the probe of that candidate on that ladder subset, so the
selector's successive halving decides which probes are spent. The flow hands it a ``submit``
callable that submits the very same cached ``probe_task`` call as the full-ladder path, so
an adaptive run and a full-ladder run share cache entries.

A diverged probe (``diverged`` or a non-finite ranking metric) raises ``ProbeDivergedError``:
``Lens`` ranks by an extrapolated loss and has no honest value to rank a diverged curve by, and
a made-up number would bias the halving. The message names the candidate, the size and how to
fix it (a lower ``probe.learning_rate``, or dropping the candidate from the config).
``run_adaptive_excluding_diverged`` excludes that candidate and goes on with the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lens_model.selectors import Lens, SuccessiveHalving, first_round
from lens_model.tradeoff import FIRST_TOPS, lens_settings
from tasks.fit import AdaptiveOutcome
from tasks.priors.prior_file import interval_settings
from tasks.records.errors import ProbeDivergedError
from tasks.records.schema import RANK_KEYS, AdaptiveRun, IntervalSpec, ProbeResult


class LiveProbes:
    """A ``ProbeSource`` over real probes, submitted on demand and memoised.

    Parameters
    ----------
    names : sequence of str
        Candidate names; model index ``i`` is ``names[i]``.
    n_params : sequence of int
        Parameter count per candidate (the Cost unit: parameters x examples).
    sizes : sequence of int
        Ladder sizes that may be probed, increasing; 0 (zero-shot) is added if missing.
    submit : callable
        ``submit(name, size)`` -> a future (``.result()``) or a :class:`ProbeResult`.
    rank_on : str
        What the probes are ranked on (``bits_per_byte`` or ``loss_per_token``).
    """

    def __init__(
        self,
        names: Sequence[str],
        n_params: Sequence[int],
        sizes: Sequence[int],
        submit: Callable[[str, int], object],
        *,
        rank_on: str = "bits_per_byte",
    ) -> None:
        self.names = list(names)
        self.model_sizes = np.asarray(n_params, dtype=float)
        self.sizes = np.array(sorted({0, *map(int, sizes)}), dtype=float)
        self.rank_on = rank_on
        self._submit = submit
        self._results: dict[tuple[int, int], ProbeResult] = {}

    def loss(self, model: int, size: int) -> float:
        """The ranking metric of candidate ``model`` fine-tuned on ``size`` examples."""
        size = int(size)
        if size not in self.sizes:
            raise KeyError(f"size {size} is not on the ladder {self.sizes.astype(int).tolist()}")
        key = (int(model), size)
        if key not in self._results:
            out = self._submit(self.names[model], size)
            self._results[key] = out.result() if hasattr(out, "result") else out
        res = self._results[key]
        if not res.usable(self.rank_on):
            raise ProbeDivergedError(
                f"the probe of candidate {self.names[model]!r} at {size} examples diverged "
                f"({RANK_KEYS[self.rank_on]}={res.value(self.rank_on)}); lower "
                "probe.learning_rate or remove the candidate from the config",
                candidate=self.names[model],
                size=size,
            )
        return res.value(self.rank_on)

    @property
    def probes(self) -> set[tuple[int, int]]:
        return set(self._results)

    def results(self) -> dict[str, list[ProbeResult]]:
        """Candidate name -> the raw probe results read so far, smallest size first."""
        out: dict[str, list[ProbeResult]] = {name: [] for name in self.names}
        for (model, _), res in sorted(self._results.items()):
            out[self.names[model]].append(res)
        return out


def adaptive_settings(ladder: Sequence[int], budget: int, fraction: float) -> dict:
    """``Lens`` keyword arguments for ``fraction`` of the full ladder's compute on ``ladder``.

    The live ladder ends at the budget (there is no data above it), so successive halving only
    happens when the first round stops below the budget. Rule: ``lens_model.tradeoff``'s
    ``lens_settings`` when its first round leaves a next size (top x spacing) on the ladder;
    otherwise spacing 2 (the doubling ladder) with the largest first round that costs at most
    half the cap, leaving the other half for the halving rounds; otherwise the largest spacing-2
    first round within the cap. Raises ``ValueError`` when no first round of two sizes fits (the
    line extrapolation needs two points per candidate).
    """
    ladder_arr = np.asarray(sorted(int(d) for d in ladder if d > 0), dtype=float)
    settings, reason = lens_settings(ladder_arr, int(budget), fraction)
    if settings is not None:
        first = first_round(
            ladder_arr, int(budget), first_top=settings["first_top"], spacing=settings["spacing"]
        )
        if first[-1] * settings["spacing"] <= budget:
            return settings
    full = ladder_arr[ladder_arr <= budget].sum()
    for share in (fraction / 2, fraction):
        for first_top in FIRST_TOPS:
            first = first_round(ladder_arr, int(budget), first_top=first_top, spacing=2)
            if len(first) < 2:
                break
            if sum(first) <= share * full * (1 + 1e-12):
                return {"cost_fraction": fraction, "first_top": first_top, "spacing": 2}
    raise ValueError(
        f"adaptive.compute_fraction={fraction} is too small for the ladder "
        f"{ladder_arr.astype(int).tolist()} ({reason or 'no first round fits'}; spacing 2 does "
        "not fit either): raise adaptive.compute_fraction or lengthen the ladder (a smaller "
        "ladder.first_size)"
    )


def adaptive_name(selector: str) -> str:
    """The adaptive selector a configured ``selector`` runs: ``SuccessiveHalving`` for
    itself, ``Lens`` otherwise."""
    return "SuccessiveHalving" if selector.lower() == "successivehalving" else "Lens"


def run_adaptive(
    source: LiveProbes,
    *,
    budget: int,
    target_size: int,
    fraction: float,
    intervals: IntervalSpec | None = None,
    selector: str = "Lens",
) -> AdaptiveOutcome:
    """Run ``Lens`` (or ``SuccessiveHalving``: :func:`adaptive_name`) on ``source`` under
    ``fraction`` of the full ladder's compute.

    Both cap their spend at ``cost_fraction`` x AtS's cost, and AtS reads every positive
    ladder size up to the budget: exactly the full ladder's compute without the (free)
    zero-shot probes. So ``cost_fraction = fraction``.
    """
    intervals = intervals or IntervalSpec()
    if adaptive_name(selector) == "SuccessiveHalving":
        settings = {"cost_fraction": fraction}
        chosen = SuccessiveHalving(**settings, level=intervals.level, interval=intervals.method)
    else:
        ladder = source.sizes[source.sizes > 0].astype(int).tolist()
        settings = adaptive_settings(ladder, budget, fraction)
        chosen = Lens(**settings, **interval_settings(intervals))
    sel = chosen.select(source, budget=int(budget), target_size=int(target_size))
    names = source.names
    run = AdaptiveRun(
        settings=settings,
        probes=sorted((names[m], int(d)) for m, d in sel.probes),
        dropped={names[i]: reason for i, reason in sel.dropped.items()},
    )
    return AdaptiveOutcome(selection=sel, names=list(names), run=run)


def run_adaptive_excluding_diverged(
    names: Sequence[str],
    n_params: Sequence[int],
    sizes: Sequence[int],
    submit: Callable[[str, int], object],
    *,
    rank_on: str,
    budget: int,
    target_size: int,
    fraction: float,
    intervals: IntervalSpec | None = None,
    selector: str = "Lens",
) -> tuple[dict[str, list[ProbeResult]], AdaptiveOutcome]:
    """:func:`run_adaptive` that excludes a candidate whose probe diverges and starts again
    on the others (their probes come back from ``submit``'s cache, not recomputed), as the
    full-ladder path does. Zero-shot probes of every candidate are read first (they are free
    and anchor the laws and the plot).

    Returns ``(probes, outcome)``: every probe read, by candidate (the excluded candidates'
    included: they were spent), and Lens's decision over the remaining candidates, whose
    ``run.excluded`` says why each excluded candidate was. Raises ``ProbeDivergedError`` when
    every candidate diverges. The cap applies to each attempt; the excluded candidates' probes
    come on top of it.
    """
    active = list(names)
    params = dict(zip(names, n_params, strict=True))
    spent: dict[str, list[ProbeResult]] = {}
    excluded: dict[str, str] = {}
    while active:
        source = LiveProbes(active, [params[n] for n in active], sizes, submit, rank_on=rank_on)
        try:
            for i in range(len(active)):
                source.loss(i, 0)
            outcome = run_adaptive(
                source,
                budget=budget,
                target_size=target_size,
                fraction=fraction,
                intervals=intervals,
                selector=selector,
            )
        except ProbeDivergedError as err:
            if err.candidate not in active:
                raise
            spent[err.candidate] = source.results()[err.candidate]
            excluded[err.candidate] = str(err)
            active.remove(err.candidate)
            continue
        run = outcome.run.model_copy(update={"excluded": excluded})
        outcome = AdaptiveOutcome(selection=outcome.selection, names=outcome.names, run=run)
        return {**source.results(), **spent}, outcome
    raise ProbeDivergedError(
        "every candidate has a diverged probe, nothing to select from: "
        + " | ".join(f"{n}: {reason}" for n, reason in excluded.items())
    )
