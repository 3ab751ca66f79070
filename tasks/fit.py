"""Fit the laws to measured probe curves, select with a registered selector, plot the result."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from prefect import task  # noqa: E402

from lens_model.laws import FitWarning, LensLaw, RectifiedLaw, VanillaLaw  # noqa: E402
from lens_model.selectors import SELECTORS, Selection, TableProbes  # noqa: E402
from tasks.live_probes import ProbeDivergedError  # noqa: E402

RANK_KEYS = {"bits_per_byte": "test_bits_per_byte", "loss_per_token": "test_loss"}


def curve_matrix(probes: dict[str, list[dict]], key: str) -> tuple[list[int], np.ndarray]:
    """Sizes (sorted) and an (N, m) matrix of ``key`` per candidate; NaN where not probed.

    A diverged probe (``diverged`` true or a non-finite value) stays NaN: it is excluded from
    fitting, never replaced by a number.
    """
    sizes = sorted({p["subset_size"] for runs in probes.values() for p in runs})
    table = np.full((len(probes), len(sizes)), np.nan)
    for row, runs in enumerate(probes.values()):
        for p in runs:
            value = p.get(key)
            if value is not None and not p.get("diverged") and np.isfinite(value) and value > 0:
                table[row, sizes.index(p["subset_size"])] = value
    return sizes, table


def exclusion_reason(runs: list[dict], key: str) -> str | None:
    """Why a candidate's curve cannot be ranked (which probes failed, what to do), or None."""
    bad, diverged = [], None
    for p in sorted(runs, key=lambda p: p["subset_size"]):
        value = p.get(key)
        if p.get("diverged") or value is None or not np.isfinite(value) or value <= 0:
            bad.append(int(p["subset_size"]))
            if p.get("diverged") and diverged is None:
                diverged = p
    if not bad:
        return None
    sizes = ", ".join("0 (zero-shot)" if d == 0 else str(d) for d in bad)
    reason = f"excluded: no finite {key} at {sizes} examples"
    if diverged is not None:
        reason += (
            f" (fine-tuning on {diverged['subset_size']} examples diverged: training loss "
            f"{diverged.get('train_loss_last')} at step {diverged.get('steps')})"
        )
    if bad[0] == 0:
        return reason + "; the untrained model's loss is not finite: check its weights"
    return reason + "; lower probe.learning_rate"


def fit_and_select(
    probes: dict[str, list[dict]],
    n_params: dict[str, int],
    *,
    target_size: int,
    budget: int,
    selector: str,
    rank_on: str = "bits_per_byte",
    seed: int = 0,
    f_terms: dict[str, float] | None = None,
    rank_with_f: bool = True,
    adaptive: dict | None = None,
) -> dict:
    """Rank candidates by predicted target loss; returns plain data for logging and registry.

    Parameters
    ----------
    probes
        Candidate name -> probe results (``subset_size`` and the measured losses).
    n_params
        Candidate name -> parameter count (ModelSize and the Cost metric use it).
    rank_on
        ``bits_per_byte`` (tokenizer-independent, the default) or ``loss_per_token``.
    f_terms
        Candidate name -> NTK term F(eta, t); adds the LensLLM law (shared scale) to the laws
        reported per candidate, and ``Lens`` predicts with it (``predictor="auto"``) unless
        ``rank_with_f`` is False.
    adaptive
        The result of ``tasks.live_probes.run_adaptive`` (predictions, intervals, drop reasons
        and probes by candidate name): used instead of re-running ``selector``; candidates may
        then lack sizes (NaN in the curves, ignored by the law fits).
    """
    names = list(probes)
    key = RANK_KEYS[rank_on]
    sizes, table = curve_matrix(probes, key)
    if adaptive is None:
        usable = np.isfinite(table).all(axis=1)
    else:  # sizes the adaptive selector never probed stay NaN; only a probed NaN excludes
        probed = np.array(
            [[any(p["subset_size"] == d for p in probes[n]) for d in sizes] for n in names]
        )
        usable = (np.isfinite(table) | ~probed).all(axis=1)
        # a candidate the adaptive run excluded (a diverged probe) has no prediction
        usable &= np.array([n in adaptive["predictions"] for n in names])
    excluded = {
        n: exclusion_reason(probes[n], key) or "a probe produced no finite loss"
        for n, ok in zip(names, usable, strict=True)
        if not ok
    }
    keep = [i for i, ok in enumerate(usable) if ok]
    if not keep:
        raise ProbeDivergedError(
            "every candidate has a diverged or non-finite probe, nothing to select from: "
            + " | ".join(f"{n}: {reason}" for n, reason in excluded.items())
        )
    weights = np.array([n_params[names[i]] for i in keep], dtype=float)
    f_keep = None  # F of every remaining candidate, or none: the shared scale needs them all
    if f_terms and all(names[i] in f_terms for i in keep):
        f_keep = np.array([f_terms[names[i]] for i in keep], dtype=float)
    source = TableProbes(
        sizes, table[keep], weights, max_size=budget, f_terms=f_keep if rank_with_f else None
    )
    selector_obj = None
    if adaptive is None:
        selector_obj = SELECTORS.get(selector)()
        sel = selector_obj.select(source, budget=budget, target_size=target_size)
    else:
        sel = _adaptive_selection(adaptive, [names[i] for i in keep])
    if not np.isfinite(sel.scores[sel.selected]):
        raise ValueError(
            f"selector {selector} gave no finite score to any candidate "
            f"({dict(zip([names[i] for i in keep], sel.scores.tolist(), strict=True))}); "
            "choose another selector or a longer ladder"
        )
    laws = _law_predictions(np.array(sizes, dtype=float), table[keep], target_size, seed, f_keep)
    candidates = {}
    for j, i in enumerate(keep):
        candidates[names[i]] = {
            "predicted_loss": float(sel.predictions[j]),
            "interval": [float(sel.lower[j]), float(sel.upper[j])],
            "score": float(sel.scores[j]),
            "dropped": sel.dropped.get(j),
            "laws": {law: {k: v[j] for k, v in vals.items()} for law, vals in laws.items()},
            **_fit_flags(selector, selector_obj, j, laws, float(sel.scores[j])),
        }
    _warn_fit_problems(candidates)
    for name, reason in excluded.items():
        candidates[name] = {
            "predicted_loss": float("nan"),
            "interval": [float("nan")] * 2,
            "score": float("nan"),
            "dropped": None,
            "excluded": reason,
            "laws": {},
            "fit_converged": None,
            "fit_warnings": [],
        }
    order = sel.ranking()
    if adaptive is not None:  # survivors first: a dropped candidate saw less data
        order = sorted(order, key=lambda j: j in sel.dropped)
    ranking = [names[keep[j]] for j in order] + list(excluded)
    return {
        "selector": selector,
        # how Lens predicted: "lens_law" (with the NTK term F) or "local_slope" (without)
        "predictor": getattr(selector_obj, "predictor_", None),
        "rank_on": rank_on,
        "metric_key": key,
        "target_size": target_size,
        "sizes": sizes,
        "selected": names[keep[sel.selected]],
        "ranking": ranking,
        "candidates": candidates,
        "cost": sel.cost(weights, target_size),
        "probes_read": sorted([names[keep[m]], int(d)] for m, d in sel.probes),
    }


def _fit_flags(selector: str, selector_obj, j: int, laws: dict, score: float) -> dict:
    """``fit_converged`` (the selector's own law fit; None for selectors that fit no law) and
    ``fit_warnings``: every fit of candidate ``j`` that did not converge, and a score that is
    not a number (ranked last). Non-convergence keeps the best fit found, flagged, never a
    substitute value."""
    converged = getattr(selector_obj, "converged_", None)
    fit_converged = None if converged is None else bool(converged[j])
    notes = []
    if fit_converged is False:
        notes.append(
            f"the {selector} law fit did not converge; its prediction is the best fit found"
        )
    if not np.isfinite(score):
        notes.append(f"{selector} gave no finite score (ranked last)")
    for law, vals in laws.items():
        if not vals["converged"][j]:
            notes.append(f"the reported {law} law fit did not converge")
    return {"fit_converged": fit_converged, "fit_warnings": notes}


def _warn_fit_problems(candidates: dict[str, dict]) -> None:
    """One ``FitWarning`` naming every candidate with a flagged fit (never silent)."""
    flagged = {n: c["fit_warnings"] for n, c in candidates.items() if c["fit_warnings"]}
    if flagged:
        warnings.warn(
            "fit problems (flagged in the result as fit_warnings): "
            + "; ".join(f"{n}: {', '.join(notes)}" for n, notes in flagged.items()),
            FitWarning,
            stacklevel=3,
        )


def _adaptive_selection(adaptive: dict, names: list[str]) -> Selection:
    """The adaptive selector's decision as a ``Selection`` over ``names`` (indices by position);
    like ``Selector.select``, a dropped candidate or a NaN prediction is never selected."""
    pred = np.array([adaptive["predictions"][n] for n in names], dtype=float)
    dropped = {j: adaptive["dropped"][n] for j, n in enumerate(names) if n in adaptive["dropped"]}
    key = np.where(np.isin(np.arange(len(names)), list(dropped)) | np.isnan(pred), np.inf, pred)
    index = {n: j for j, n in enumerate(names)}
    return Selection(
        scores=pred,
        selected=int(np.argmin(key)),
        predictions=pred,
        lower=np.array([adaptive["lower"][n] for n in names], dtype=float),
        upper=np.array([adaptive["upper"][n] for n in names], dtype=float),
        probes={(index[n], int(d)) for n, d in adaptive["probes"] if n in index},
        dropped=dropped,
    )


def _law_predictions(sizes, table, target_size, seed, f_terms=None) -> dict[str, dict[str, list]]:
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
            if isinstance(law, LensLaw):
                law.fit(sizes[use], table[:, use], f_term=f_terms)
            else:
                law.fit(sizes[use], table[:, use])
            lo, hi = law.predict_interval([target_size])
            out[law.name] = {
                "predicted_loss": law.predict([target_size])[:, 0].tolist(),
                "interval_low": lo[:, 0].tolist(),
                "interval_high": hi[:, 0].tolist(),
                "rmse_log": law.rmse_log_.tolist(),
                "converged": law.converged_.tolist(),
                **{  # a shared parameter (LensLaw's scale) is repeated per candidate
                    k: np.broadcast_to(np.asarray(v, dtype=float), (len(table),)).tolist()
                    for k, v in law.params_.items()
                },
            }
    return out


def plot_selection(result: dict, probes: dict[str, list[dict]], path: str) -> str:
    """All candidates on one figure: measured points, rectified fit, prediction + interval."""
    sizes, table = curve_matrix(probes, result["metric_key"])
    target = result["target_size"]
    x = np.array(sizes, dtype=float)
    pos = x > 0
    grid = np.geomspace(x[pos].min() / 2, target * 1.3, 120)
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for row, name in enumerate(probes):
        cand = result["candidates"][name]
        color = f"C{row % 10}"
        label = name + (" (selected)" if name == result["selected"] else "")
        ax.plot(x[pos], table[row, pos], "o", color=color, label=label)
        if np.isfinite(table[row, 0]) and not pos[0]:
            ax.plot([grid[0]], [table[row, 0]], "s", color=color, mfc="none")
        rect = cand["laws"].get("rectified")
        if rect:
            ax.plot(grid, _rectified_curve(rect, grid), ":", color=color, lw=1, alpha=0.6)
        pred, (lo, hi) = cand["predicted_loss"], cand["interval"]
        measured = np.flatnonzero(pos & np.isfinite(table[row]))
        if np.isfinite(pred) and len(measured):
            last = measured[-1]  # the selector's extrapolation, from the largest probe
            ax.plot([x[last], target], [table[row, last], pred], "--", color=color, lw=1.2)
        if np.isfinite(pred):
            err = [[pred - lo], [hi - pred]] if np.isfinite(lo) and np.isfinite(hi) else None
            ax.errorbar([target], [pred], yerr=err, fmt="*", ms=12, color=color, capsize=4)
    ax.axvline(target, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    unit = "bits per byte" if result["rank_on"] == "bits_per_byte" else "nats per token"
    ax.set_xlabel("fine-tuning examples (squares at the left: zero-shot)")
    ax.set_ylabel(f"test loss ({unit})")
    ax.set_title(
        f"{result['selector']}: predicted loss at {target} examples (stars, 90% interval)\n"
        "dashed: selector's extrapolation; dotted: rectified-law fit",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rectified_curve(params: dict, grid: np.ndarray) -> np.ndarray:
    b, d_l, beta, e = (np.asarray(params[k], dtype=float) for k in ("B", "D_l", "beta", "E"))
    return b / (d_l + grid**beta) + e


def plot_spectra(ntk: dict[str, dict], path: str) -> str:
    """NTK eigenvalues and cumulative residual alignment of every candidate."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, feats) in enumerate(ntk.items()):
        lam = np.asarray(feats["eigenvalues"], dtype=float)
        k = np.arange(1, len(lam) + 1)
        ax1.loglog(k, np.maximum(lam, 1e-30), "o-", ms=3, color=f"C{i}", label=name)
        ax2.semilogx(
            k,
            np.cumsum(feats["alignment"]),
            "o-",
            ms=3,
            color=f"C{i}",
            label=f"{name} (F={feats.get('f_term', float('nan')):.3g})",
        )
    ax1.set_xlabel("eigenvalue index k")
    ax1.set_ylabel("lambda_k of Theta")
    ax1.set_title("NTK spectrum (LoRA parameters)")
    ax2.set_xlabel("eigenvalue index k")
    ax2.set_ylabel("cumulative (u_k . r0)^2 / ||r0||^2")
    ax2.set_title("alignment of the initial residual")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@task(name="fit-and-select")
def fit_and_select_task(probes: dict, n_params: dict, **kwargs) -> dict:
    return fit_and_select(probes, n_params, **kwargs)
