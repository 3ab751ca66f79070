"""Fit the laws to measured probe curves and select with a registered selector."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import numpy as np
from prefect import task

from lens_model.laws import FitWarning, LensLaw, RectifiedLaw, VanillaLaw
from lens_model.selectors import SELECTORS, NLPMetrics, Selection, TableProbes
from tasks.priors.prior_file import interval_settings
from tasks.records.errors import ConfigError, ProbeDivergedError
from tasks.records.schema import (
    RANK_KEYS,
    AdaptiveRun,
    CandidateResult,
    IntervalSpec,
    LawFit,
    ProbeResult,
    SelectionResult,
)


@dataclass(frozen=True)
class AdaptiveOutcome:
    """An adaptive run's decision: ``selection`` is Lens's own, over ``names`` (by position)."""

    selection: Selection
    names: list[str]
    run: AdaptiveRun


def curve_matrix(
    probes: dict[str, list[ProbeResult]], rank_on: str
) -> tuple[list[int], np.ndarray]:
    """Sizes (sorted) and an (N, m) matrix of the ranked loss per candidate; NaN where not
    probed. A diverged probe (``diverged`` or a non-finite value) stays NaN: it is excluded
    from fitting, never replaced by a number."""
    sizes = sorted({p.size for runs in probes.values() for p in runs})
    table = np.full((len(probes), len(sizes)), np.nan)
    for row, runs in enumerate(probes.values()):
        for p in runs:
            if p.usable(rank_on):
                table[row, sizes.index(p.size)] = p.value(rank_on)
    return sizes, table


def exclusion_reason(runs: list[ProbeResult], rank_on: str) -> str | None:
    """Why a candidate's curve cannot be ranked (which probes failed, what to do), or None."""
    bad = [p for p in sorted(runs, key=lambda p: p.size) if not p.usable(rank_on)]
    if not bad:
        return None
    sizes = ", ".join("0 (zero-shot)" if p.size == 0 else str(p.size) for p in bad)
    reason = f"excluded: no finite {RANK_KEYS[rank_on]} at {sizes} examples"
    diverged = next((p for p in bad if p.diverged), None)
    if diverged is not None:
        reason += (
            f" (fine-tuning on {diverged.size} examples diverged: training loss "
            f"{diverged.train_loss_last} at step {diverged.steps})"
        )
    if bad[0].size == 0:
        return reason + "; the untrained model's loss is not finite: check its weights"
    return reason + "; lower probe.learning_rate"


def fit_and_select(
    probes: dict[str, list[ProbeResult]],
    n_params: dict[str, int],
    *,
    target_size: int,
    budget: int,
    selector: str,
    rank_on: str = "bits_per_byte",
    seed: int = 0,
    f_terms: dict[str, float] | None = None,
    rank_with_f: bool = True,
    adaptive: AdaptiveOutcome | None = None,
    intervals: IntervalSpec | None = None,
    spectral: dict[str, dict[str, float]] | None = None,
) -> SelectionResult:
    """Rank candidates by predicted target loss.

    ``probes`` and ``n_params`` map each candidate's name to its probe results and parameter
    count (ModelSize and the Cost metric use it); ``rank_on`` is ``bits_per_byte``
    (tokenizer-independent, the default) or ``loss_per_token``. ``f_terms`` (name -> NTK term
    F(eta, t)) adds the LensLLM law (shared scale) to the laws reported per candidate, and
    ``Lens`` predicts with it (``predictor="auto"``) unless ``rank_with_f`` is False.
    ``adaptive``, an adaptive run's own decision, is used instead of running ``selector``
    again (candidates may then lack sizes: NaN in the curves, ignored by the law fits).
    ``intervals``: level and method of the intervals (default: calibrated 90 %); the result
    also carries each candidate's probability of being best and every pairwise probability,
    from the same predictive distributions. ``spectral`` (name -> weight-spectrum metrics,
    ``SpectralResult.summary()``) is what ``NLPMetrics`` ranks by.
    """
    names = list(probes)
    sizes, table, keep, excluded = _usable_curves(probes, rank_on, adaptive is not None)
    kept = [names[i] for i in keep]
    weights = np.array([n_params[n] for n in kept], dtype=float)
    f_keep = _shared_f(f_terms, kept)
    if adaptive is None:
        f_rank = f_keep if rank_with_f else None
        source = TableProbes(sizes, table[keep], weights, max_size=budget, f_terms=f_rank)
        chosen = _selector(selector, intervals, spectral, kept)
        sel = chosen.select(source, budget=budget, target_size=target_size)
    else:
        sel = _adaptive_selection(adaptive, kept)
    ranking = _ranking(sel, selector, kept, excluded, survivors_first=adaptive is not None)
    laws = law_fits(np.array(sizes, dtype=float), table[keep], target_size, seed, f_keep)
    return SelectionResult(
        selector=selector,
        # the adaptive path records its Lens settings in ``AdaptiveRun`` instead
        predictor=sel.predictor if adaptive is None else None,
        rank_on=rank_on,
        target_size=target_size,
        sizes=sizes,
        selected=kept[sel.selected],
        ranking=ranking,
        candidates=_candidates(sel, kept, ranking, laws, f_keep, selector, excluded, names),
        cost=sel.cost(weights, target_size),
        probes_read=sorted((kept[m], int(d)) for m, d in sel.probes),
        level=sel.level,
        interval_method=sel.interval_method,
        interval_basis=sel.interval_basis,
        prob_better=_prob_better(sel, kept),
    )


def _shared_f(f_terms: dict[str, float] | None, kept: list[str]) -> np.ndarray | None:
    """F of every remaining candidate, or None: the shared scale of F needs them all."""
    if f_terms and set(kept) <= set(f_terms):
        return np.array([f_terms[n] for n in kept], dtype=float)
    return None


def _adaptive_selection(adaptive: AdaptiveOutcome, kept: list[str]) -> Selection:
    """The adaptive run's own selection, which must rank exactly the usable candidates."""
    if adaptive.names != kept:
        raise RuntimeError(
            f"the adaptive run ranked {adaptive.names} but the usable curves are {kept}"
        )
    return adaptive.selection


def _ranking(sel: Selection, selector: str, kept, excluded, *, survivors_first: bool) -> list:
    """Candidate names from best to worst: the ranked ones (an adaptive run's survivors
    first: a dropped candidate saw less data), then the excluded ones."""
    if not np.isfinite(sel.scores[sel.selected]):
        raise ValueError(
            f"selector {selector} gave no finite score to any candidate "
            f"({dict(zip(kept, sel.scores.tolist(), strict=True))}); "
            "choose another selector or a longer ladder"
        )
    order = list(sel.ranking())
    if survivors_first:
        order = sorted(order, key=lambda j: j in sel.dropped)
    return [kept[j] for j in order] + list(excluded)


def _prob_better(sel: Selection, kept: list[str]) -> dict[str, dict[str, float]]:
    """``P(a better than b)`` for every ordered pair of candidates that has one."""
    better = sel.prob_better_matrix()
    return {
        a: {
            b: float(better[i, j])
            for j, b in enumerate(kept)
            if j != i and np.isfinite(better[i, j])
        }
        for i, a in enumerate(kept)
    }


def _selector(name: str, intervals: IntervalSpec | None, spectral=None, kept=()):
    """The selector, with the intervals asked for. In the pipeline every ladder size was
    probed anyway, so a selector that can backtest its predictor on all of them does
    (``Lens(backtest_on="ladder")``: more origins than its sparse first round). ``NLPMetrics``
    gets the ``kept`` candidates' weight-spectrum metrics from ``spectral``."""
    cls = SELECTORS.get(name)
    intervals = intervals or IntervalSpec()
    kwargs = interval_settings(intervals)
    if "backtest_on" in inspect.signature(cls).parameters:
        kwargs["backtest_on"] = "ladder"
    if cls is NLPMetrics:
        missing = [n for n in kept if n not in (spectral or {})]
        if missing:
            raise ConfigError(
                f"selector NLPMetrics ranks by the weight-spectrum metrics, and {missing} have "
                "none: set spectral.enabled: true (or choose another selector)"
            )
        metric = cls().metric
        kwargs["values"] = [spectral[n][metric] for n in kept]
    return cls(**kwargs)


def _candidates(sel, kept, ranking, laws, f_keep, selector, excluded, names):
    """Every candidate's :class:`CandidateResult`, in the order of ``names``: the ranked ones
    with their prediction, interval, law fits and fit flags, the excluded ones with the
    reason (and NaN)."""
    candidates = {
        name: CandidateResult(
            name=name,
            rank=ranking.index(name) + 1,
            predicted_loss=float(sel.predictions[j]),
            interval=(float(sel.lower[j]), float(sel.upper[j])),
            score=float(sel.scores[j]),
            dropped=sel.dropped.get(j),
            laws={law: fits[j] for law, fits in laws.items()},
            f_term=None if f_keep is None else float(f_keep[j]),
            p_best=float(sel.p_best[j]) if np.isfinite(sel.p_best[j]) else None,
            **_fit_flags(selector, sel, j, laws, float(sel.scores[j])),
        )
        for j, name in enumerate(kept)
    }
    _warn_fit_problems(candidates)
    nan = float("nan")
    for name, reason in excluded.items():
        candidates[name] = CandidateResult(
            name=name,
            rank=ranking.index(name) + 1,
            predicted_loss=nan,
            interval=(nan, nan),
            score=nan,
            excluded=reason,
        )
    return {n: candidates[n] for n in names}


def _usable_curves(probes: dict[str, list[ProbeResult]], rank_on: str, adaptive: bool):
    """``(sizes, table, keep, excluded)``: the curves, the rows that can be ranked and why the
    others cannot. Sizes an adaptive selector never probed stay NaN (the law fits ignore
    them); only a probed NaN excludes. Raises when nothing can be ranked."""
    names = list(probes)
    sizes, table = curve_matrix(probes, rank_on)
    probed = np.array([[any(p.size == d for p in probes[n]) for d in sizes] for n in names])
    usable = (np.isfinite(table) | (~probed if adaptive else False)).all(axis=1)
    excluded = {
        n: exclusion_reason(probes[n], rank_on) or "a probe produced no finite loss"
        for n, ok in zip(names, usable, strict=True)
        if not ok
    }
    keep = [i for i, ok in enumerate(usable) if ok]
    if not keep:
        raise ProbeDivergedError(
            "every candidate has a diverged or non-finite probe, nothing to select from: "
            + " | ".join(f"{n}: {reason}" for n, reason in excluded.items())
        )
    return sizes, table, keep, excluded


def _fit_flags(selector: str, sel: Selection, j: int, laws: dict, score: float) -> dict:
    """``fit_converged`` (the selector's own law fit; None for selectors that fit no law) and
    ``fit_warnings``: every fit of candidate ``j`` that did not converge, and a score that is
    not a number (ranked last). Non-convergence keeps the best fit found, flagged, never a
    substitute value."""
    fit_converged = None if sel.converged is None else bool(sel.converged[j])
    notes = []
    if fit_converged is False:
        notes.append(
            f"the {selector} law fit did not converge; its prediction is the best fit found"
        )
    if not np.isfinite(score):
        notes.append(f"{selector} gave no finite score (ranked last)")
    for law, fits in laws.items():
        if not fits[j].converged:
            notes.append(f"the reported {law} law fit did not converge")
    return {"fit_converged": fit_converged, "fit_warnings": notes}


def _warn_fit_problems(candidates: dict[str, CandidateResult]) -> None:
    """One ``FitWarning`` naming every candidate with a flagged fit (never silent)."""
    flagged = {n: c.fit_warnings for n, c in candidates.items() if c.fit_warnings}
    if flagged:
        warnings.warn(
            "fit problems (flagged in the result as fit_warnings): "
            + "; ".join(f"{n}: {', '.join(notes)}" for n, notes in flagged.items()),
            FitWarning,
            stacklevel=3,
        )


def law_fits(sizes, table, target_size, seed, f_terms=None) -> dict[str, list[LawFit]]:
    """The rectified and vanilla laws (and the LensLLM law with F) fitted to every curve and
    evaluated at the target: law name -> one :class:`LawFit` per row of ``table``."""
    out = {}
    laws = [RectifiedLaw(seed=seed), VanillaLaw(seed=seed)]
    if f_terms is not None and len(table) >= 2:
        laws.append(LensLaw(scale="shared", seed=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)  # reported through the converged flag
        for law in laws:
            use = (sizes > 0) | law.uses_zero_shot
            if use.sum() < len(law.param_names) - 1:
                continue
            try:
                if isinstance(law, LensLaw):
                    law.fit(sizes[use], table[:, use], f_term=f_terms)
                else:
                    law.fit(sizes[use], table[:, use])
            except ValueError:
                # a curve with too few points for this law (successive halving drops some
                # candidates after one size): the law is not reported, nothing is made up
                continue
            pred = law.predict([target_size])[:, 0]
            lo, hi = law.predict_interval([target_size])
            params = {  # a shared parameter (LensLaw's scale) is repeated per candidate
                k: np.broadcast_to(np.asarray(v, dtype=float), (len(table),))
                for k, v in law.params_.items()
            }
            out[law.name] = [
                LawFit(
                    predicted_loss=float(pred[j]),
                    interval_low=float(lo[j, 0]),
                    interval_high=float(hi[j, 0]),
                    rmse_log=float(law.rmse_log_[j]),
                    converged=bool(law.converged_[j]),
                    params={k: float(v[j]) for k, v in params.items()},
                )
                for j in range(len(table))
            ]
    return out


@task(name="fit-and-select")
def fit_and_select_task(probes: dict, n_params: dict, **kwargs) -> SelectionResult:
    return fit_and_select(probes, n_params, **kwargs)
