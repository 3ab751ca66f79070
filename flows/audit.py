"""Audit flow: run a selection, then train every candidate at every doubling size up to the
target, and report what the selection's choice was really worth.

Outputs in ``out_dir``:

* ``<task>.csv``: the task's full loss table (every candidate x ``0, first_size, ...,
  target_size``, plus ``size`` and ``family``) in exactly the format of the published replay
  tables, so ``lensllm benchmark --table <task>.csv`` scores every selector on this task;
* ``audit.md`` / ``audit.json``: the realized regret (RelAcc of the selection's choice on the
  measured target losses, whether it really was the best), every candidate's prediction
  against its measurement, what each registered selector would have chosen at the
  config's budget, and each candidate's weight-spectrum metrics beside its measured loss
  with the choice of the lowest mean weighted alpha (the NLPmetrics baseline, no probes).

An audit written before the weight-spectrum metrics existed gets them without re-running
(:func:`add_spectra`, ``lensllm audit-spectra --out DIR``).

Every probe is the pipeline's cached probe task, so an audit after a selection recomputes none
of the selection's probes, and a second audit recomputes nothing. Scheduled monthly
(``deployments/prefect.yaml``: ``monthly-audit``)::

    lensllm audit --config configs/audit.yaml --out out/audit
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import SelectionConfig, load_config
from flows.runners import probe_threads
from flows.select import run_selection
from lens_model.metrics import pearson_correlation, relative_accuracy
from lens_model.selectors import SELECTORS, NLPMetrics
from lens_model.table_score import score
from lens_model.weight_spectrum import RANKING_METRIC, SUMMARY_METRICS
from tasks.data import prepare_data_task
from tasks.models import describe_candidate, family_of, resolve_candidate_task
from tasks.probing.plan import ProbePlan
from tasks.records.errors import ConfigError, MissingFileError
from tasks.records.schema import Ladder, SelectionSummary, SpectralSpec, count_held
from tasks.reporting.live_record import audit_table
from tasks.reporting.loss_tables import table_from_frame
from tasks.runtime.result_storage import result_storage
from tasks.tracking.client import Tracker
from tasks.weight_metrics import MATRICES, candidate_spectra


@flow(name="audit-selection", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def audit_flow(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    out_dir: str = "out/audit",
) -> dict:
    """Audit the selection of a config (see the module docstring); returns the report."""
    cfg = load_config(config_path, overrides)
    check_auditable(cfg)
    # every candidate trained at the target: the selection's checks hold all of them
    cfg = cfg.model_copy(
        update={"validation": cfg.validation.model_copy(update={"top_k": len(cfg.candidates)})}
    )
    summary = run_selection(cfg)
    table = loss_table(cfg, summary)
    report = audit_report(cfg, summary, table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / f"{cfg.name}.csv"
    table.to_csv(table_path, index=False, float_format="%.6f")
    write_report(out, report, table)
    tracker = Tracker(summary.tracking_uri)
    for file in (table_path, out / "audit.md", out / "audit.json"):
        tracker.log_artifact(summary.run_id, str(file), "audit")
    get_run_logger().info(
        "audit of %s: %s selected, RelAcc %.3f, best measured %s; table %s",
        cfg.name,
        report["selected"],
        report["rel_acc"],
        report["best_measured"],
        table_path,
    )
    return {**report, "out_dir": str(out), "table": str(table_path)}


@flow(name="audit-spectra", log_prints=True)
def audit_spectra_flow(out_dir: str, cache_dir: str = ".lensllm") -> dict:
    """Compute the weight-spectrum metrics of every candidate of the audit in ``out_dir``
    (cached task; models resolved in ``cache_dir``/models) and add them to its report."""
    report, table = read_audit(Path(out_dir))
    cache = Path(cache_dir).resolve()
    models = {
        name: resolve_candidate_task(name, cache_dir=str(cache / "models"))
        for name in table["config name"]
    }
    spectra = candidate_spectra(models, SpectralSpec(), storage=result_storage(cache))
    return add_spectra(out_dir, {name: result.summary() for name, result in spectra.items()})


def check_auditable(cfg: SelectionConfig) -> None:
    """The loss table must double up to the target, like the published tables."""
    ratio, rest = divmod(cfg.target_size, cfg.ladder.first_size)
    if rest or ratio & (ratio - 1):
        raise ConfigError(
            f"an audit writes a loss table whose sizes double from ladder.first_size "
            f"({cfg.ladder.first_size}) to target_size ({cfg.target_size}): make target_size "
            "ladder.first_size times a power of two"
        )


def loss_table(cfg: SelectionConfig, summary: SelectionSummary) -> pd.DataFrame:
    """Every candidate at every doubling size up to the target (cached probes), as a replay
    table: model name, one column per size (0 = zero-shot), ``size`` and ``family``."""
    cache = Path(cfg.cache_dir).resolve()
    data = prepare_data_task(cfg.dataset, cfg.ladder, cfg.target_size)
    if data.target_examples < cfg.target_size:
        raise ConfigError(
            f"the train split has {data.target_examples} examples, fewer than target_size "
            f"({cfg.target_size}): the audit cannot measure the target; lower target_size"
        )
    trust = cfg.trust()
    models = {
        c.name: resolve_candidate_task(c.name, cache_dir=str(cache / "models"),
                                       trust_remote_code=trust[c.name])
        for c in cfg.candidates
    }  # fmt: skip
    plan = ProbePlan(
        data, models, trust, cfg.probe, probe_threads(cfg.runner), cache, result_storage(cache)
    )
    sizes = Ladder(first_size=cfg.ladder.first_size, budget=cfg.target_size).sizes()
    beyond = [d for d in sizes if cfg.ladder.budget < d < cfg.target_size]
    futures = {(n, d): plan.submit(n, d, save=False) for n in models for d in beyond}
    measured = {key: plan.result(f).value(cfg.rank_on) for key, f in futures.items()}
    checks = {c.candidate: c.measured_loss for c in summary.checks}
    rows = []
    for name, path in models.items():
        row = {"config name": name}
        ladder = {p.size: p for p in _probes_of(summary, name, plan)}
        for d in [0, *sizes]:
            if d == cfg.target_size:
                value = checks[name]
            elif d in ladder:
                value = ladder[d].value(cfg.rank_on)
            else:
                value = measured[(name, d)]
            row[str(d)] = value
        family = family_of(name)
        row["size"] = int(describe_candidate(path)["n_params"])
        row["family"] = family.name if family else Path(path).name
        rows.append(row)
    return pd.DataFrame(rows)


def _probes_of(summary: SelectionSummary, name: str, plan: ProbePlan):
    """The selection's probes of ``name`` at every ladder size (from the cache: an adaptive
    selection may have skipped some)."""
    futures = [plan.submit(name, d) for d in [0, *plan.data.sizes]]
    return [plan.result(f) for f in futures]


def audit_report(cfg: SelectionConfig, summary: SelectionSummary, table: pd.DataFrame) -> dict:
    """Realized regret of the selection, predictions against measurements, and what every
    selector would have chosen at the config's budget on the measured table."""
    target = str(cfg.target_size)
    truth = dict(zip(table["config name"], table[target], strict=True))
    names = list(truth)
    true = np.array([truth[n] for n in names])
    result = summary.result
    selected = result.selected
    best = names[int(np.argmin(true))]
    checks = [
        c.model_dump() | {"log_error": c.log_error, "held": c.held}
        for c in sorted(summary.checks, key=lambda c: c.rank)
    ]
    held, stated = count_held(c["held"] for c in checks)
    return {
        "task": cfg.name,
        "selector": cfg.selector,
        "rank_on": cfg.rank_on,
        "budget": cfg.ladder.budget,
        "target_size": cfg.target_size,
        "selected": selected,
        "best_measured": best,
        "selected_was_best": selected == best,
        "rel_acc": relative_accuracy(names.index(selected), true),
        "intervals_held": held,
        "intervals_checked": stated,
        "level": result.level,
        "interval_method": result.interval_method,
        "checks": checks,
        "selectors": replay_at_budget(
            table, cfg.ladder.budget, cfg.target_size, _spectral_metrics(summary)
        ),
        "selection_run": summary.run_id,
        **_spectral_section(table, summary, cfg.target_size),
    }


def _spectral_metrics(summary: SelectionSummary) -> dict[str, dict[str, float]] | None:
    """Each candidate's weight-spectrum metrics by name, or None when not computed."""
    if not summary.spectral:
        return None
    return {name: result.summary() for name, result in summary.spectral.items()}


def _spectral_section(table: pd.DataFrame, summary: SelectionSummary, target: int) -> dict:
    metrics = _spectral_metrics(summary)
    return {} if metrics is None else {"spectral": spectral_choice(table, metrics, target)}


def spectral_choice(table: pd.DataFrame, metrics: dict[str, dict[str, float]], target: int):
    """Each candidate's weight-spectrum metrics (``metrics[name][metric]``) beside its measured
    loss at ``target``, and what ranking by the lowest mean weighted alpha picks: RelAcc on
    the measured losses, PearCorr of the metric with them, cost 0 (no probe)."""
    names = list(table["config name"])
    missing = [n for n in names if n not in metrics]
    if missing:
        raise ValueError(f"no weight-spectrum metrics for {missing}: compute them for every row")
    true = table[str(target)].to_numpy(dtype=float)
    scores = np.array([metrics[n][RANKING_METRIC] for n in names])
    pick = int(np.argmin(scores))
    return {
        "metric": RANKING_METRIC,
        "matrices": MATRICES,
        "selected": names[pick],
        "rel_acc": relative_accuracy(pick, true),
        "pear_corr": float(pearson_correlation(scores, true)),
        "cost": 0.0,
        "candidates": [
            {"candidate": n, **{k: metrics[n][k] for k in SUMMARY_METRICS}, "measured_loss": t}
            for n, t in zip(names, true.tolist(), strict=True)
        ],
    }


def write_report(out: Path, report: dict, table: pd.DataFrame) -> None:
    """``audit.json`` and ``audit.md`` of ``report`` into ``out``."""
    (out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "audit.md").write_text(audit_markdown(report, table) + "\n")


def read_audit(out: Path) -> tuple[dict, pd.DataFrame]:
    """The report and the loss table an audit wrote into ``out``."""
    file = out / "audit.json"
    if not file.is_file():
        raise MissingFileError(
            f"{file} does not exist: give the folder of a written audit "
            "(lensllm audit --config FILE --out DIR writes one)"
        )
    report = json.loads(file.read_text())
    return report, pd.read_csv(audit_table(out, report["task"]))


def add_spectra(out_dir: str | Path, metrics: dict[str, dict[str, float]]) -> dict:
    """Add the weight-spectrum section to a written audit (``audit.json``, and ``audit.md``
    where it replaces an earlier such section), scored on its loss table, without re-running
    anything; returns the report."""
    out = Path(out_dir)
    report, table = read_audit(out)
    report["spectral"] = spectral_choice(table, metrics, report["target_size"])
    report["selectors"] = replay_at_budget(table, report["budget"], report["target_size"], metrics)
    (out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
    # the rest of audit.md stays as the audit wrote it (the CSV's rounding would move cells)
    text = (out / "audit.md").read_text().split(f"\n{SPECTRAL_HEADING}")[0].rstrip("\n")
    head, _, rest = text.partition(f"\n{_selectors_heading(report['budget'])}\n")
    if rest:  # the every-selector section, rewritten with the selectors that exist now
        after = rest.split("\n-: no interval stated", 1)[-1].partition("\n")[2]
        text = "\n".join([head, *_selectors_markdown(report), *([after] if after else [])])
    section = _spectral_markdown(report["spectral"], report["target_size"])
    (out / "audit.md").write_text("\n".join([text, "", *section]) + "\n")
    return report


def replay_at_budget(
    table: pd.DataFrame, budget: int, target: int, spectral: dict | None = None
) -> list[dict]:
    """Every registered selector on the measured table at ``budget`` (reading nothing above
    it, never the target): its choice, RelAcc, PearCorr, Cost and intervals held.
    ``NLPMetrics`` ranks by ``spectral`` (candidate name -> its weight-spectrum metrics); it is
    skipped ("needs weights") without them."""
    losses = table_from_frame(table, "audit", doubling=False)
    rows = []
    for method in SELECTORS.names():
        selector = SELECTORS.get(method)()
        if isinstance(selector, NLPMetrics) and spectral is not None:
            selector = selector.replace(
                values=[spectral[n][selector.metric] for n in losses.models]
            )
        try:
            scored = score(selector, losses, budget=budget, target_size=target)
        except ValueError as err:  # e.g. Lens needs a ladder its first round fits on
            rows.append({"method": method, "skipped": str(err)})
            continue
        held, stated = scored.intervals_held()
        rows.append(
            {
                "method": method,
                "selected": losses.models[scored.selection.selected],
                "rel_acc": scored.rel_acc,
                "pear_corr": float(scored.pear_corr),
                "cost": scored.cost,
                "intervals_held": held,
                "intervals": stated,
                "interval_method": scored.selection.interval_method,
            }
        )
    return rows


def audit_markdown(report: dict, table: pd.DataFrame) -> str:
    """The audit as a reviewer reads it."""
    lines = [
        f"# Audit of `{report['task']}` ({report['rank_on']}, target {report['target_size']} "
        "examples)",
        "",
        f"{report['selector']} at budget {report['budget']} selected **{report['selected']}**; "
        f"the best candidate measured at the target is **{report['best_measured']}** "
        f"(RelAcc {report['rel_acc']:.3f}; "
        f"{'the winner really was best' if report['selected_was_best'] else 'not the best'}). "
        f"{report['intervals_held']} of {report['intervals_checked']} "
        f"{report['level']:.0%} {report['interval_method']} intervals held the measured loss.",
        "",
        "## Loss table (measured)",
        "",
        "| model | " + " | ".join(c for c in table.columns if c != "config name") + " |",
        "|---" * len(table.columns) + "|",
    ]
    for row in table.itertuples(index=False):
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row[1:]]
        lines.append(f"| {row[0]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Predicted against measured at the target",
        "",
        "| candidate | rank | predicted | interval | measured | log error | held |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report["checks"]:
        lines.append(
            f"| {c['candidate']} | {c['rank']} | {c['predicted_loss']:.4f} | "
            f"{_interval_cell(c)} | {c['measured_loss']:.4f} | "
            f"{c['log_error']:+.3f} | {({True: 'yes', False: 'no'}).get(c['held'], 'n/a')} |"
        )
    lines += ["", *_selectors_markdown(report)]
    if "spectral" in report:
        lines += ["", *_spectral_markdown(report["spectral"], report["target_size"])]
    return "\n".join(lines)


def _selectors_heading(budget: int) -> str:
    return f"## Every selector at budget {budget} on the measured table"


def _selectors_markdown(report: dict) -> list[str]:
    """The every-selector section of audit.md (ending with its footnote)."""
    lines = [
        _selectors_heading(report["budget"]),
        "",
        "| method | selected | RelAcc | PearCorr | Cost | intervals held |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["selectors"]:
        if "skipped" in r:
            lines.append(f"| {r['method']} | skipped: {r['skipped']} | | | | |")
        else:
            held = (
                f"{r['intervals_held']}/{r['intervals']} ({r['interval_method']})"
                if r["intervals"]
                else "-"
            )
            lines.append(
                f"| {r['method']} | {r['selected']} | {r['rel_acc']:.3f} | "
                f"{r['pear_corr']:.3f} | {r['cost']:.4f} | {held} |"
            )
    lines += [
        "",
        "-: no interval stated (the selector predicts no loss, or had too few probes to "
        "calibrate an interval). NLPMetrics ranks by the lowest mean weighted alpha of the "
        "weights (no probes); SuccessiveHalving runs under Lens's cap (1 x AtS's cost).",
    ]
    return lines


SPECTRAL_HEADING = "## Weight-spectrum metrics (NLPmetrics: no probes, cost 0)"


def _spectral_markdown(spectral: dict, target: int) -> list[str]:
    lines = [
        SPECTRAL_HEADING,
        "",
        f"Means over the {spectral['matrices']}; lower = better for each (Martin & Mahoney "
        "2021; the weighted alpha is the one they rank with).",
        "",
        f"| candidate | weighted alpha | alpha | log10 lambda_max | measured at {target} |",
        "|---|---|---|---|---|",
    ]
    for c in spectral["candidates"]:
        lines.append(
            f"| {c['candidate']} | {c['alpha_weighted']:.3f} | {c['alpha']:.3f} | "
            f"{c['log_spectral_norm']:.3f} | {c['measured_loss']:.4f} |"
        )
    lines += [
        "",
        f"The lowest {spectral['metric']} picks **{spectral['selected']}**: RelAcc "
        f"{spectral['rel_acc']:.3f} on the measured losses at {target}, PearCorr of the metric "
        f"with them {spectral['pear_corr']:.3f}.",
    ]
    return lines


def _interval_cell(check: dict) -> str:
    if check["held"] is None:
        return "none stated"
    return f"[{check['interval_low']:.4g}, {check['interval_high']:.4g}]"
