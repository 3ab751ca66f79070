"""``lensllm select`` and ``lensllm audit``: the pipeline from a YAML config. Their MLflow store
is the config's ``tracking.uri`` (``--set tracking.uri=URI``), else ``$MLFLOW_TRACKING_URI``,
else the local store."""

from __future__ import annotations

import click

from flows.cli.cli_options import (
    config_option,
    out_option,
    prefect_api,
    prefect_api_option,
    set_option,
)
from flows.cli.console_errors import no_tracebacks_for_input_errors
from flows.cli.selection_summary import print_summary


@click.command("select")
@config_option
@set_option
@prefect_api_option
def select_command(config: str, overrides: tuple[str, ...], prefect_api_url: str | None) -> int:
    """Run a model selection from a YAML config."""
    from flows.config import load_config
    from flows.select import flow_with_runner

    overrides = list(overrides)
    cfg = load_config(config, overrides)  # fail on a bad config before starting Prefect
    with prefect_api(prefect_api_url), no_tracebacks_for_input_errors():
        summary = flow_with_runner(cfg)(config_path=config, overrides=overrides)
    print_summary(summary)
    return 0


@click.command(
    "audit", short_help="A selection, then every candidate trained up to the target: regret."
)
@config_option
@set_option
@out_option
@prefect_api_option
def audit_command(
    config: str, overrides: tuple[str, ...], out: str, prefect_api_url: str | None
) -> int:
    """A selection, then every candidate trained up to the target: regret."""
    from flows.audit import audit_flow, check_auditable
    from flows.config import load_config

    overrides = list(overrides)
    check_auditable(load_config(config, overrides))  # bad input fails before Prefect
    with prefect_api(prefect_api_url), no_tracebacks_for_input_errors():
        report = audit_flow(config_path=config, overrides=overrides, out_dir=out)
    print(f"\n{report['selector']} selected {report['selected']}; best measured at the target: "
          f"{report['best_measured']} (RelAcc {report['rel_acc']:.3f})")  # fmt: skip
    print(
        f"{report['intervals_held']} of {report['intervals_checked']} {report['level']:.0%} "
        f"{report['interval_method']} intervals held the measured loss"
    )
    print(f"loss table: {report['table']} (score it: lensllm benchmark --table {report['table']}"
          f" --out OUT)\nreport: {report['out_dir']}/audit.md")  # fmt: skip
    return 0


@click.command(
    "audit-spectra",
    short_help="Add weight-spectrum metrics to a written audit; re-runs nothing.",
)
@click.option(
    "--out", required=True, type=click.Path(exists=True, file_okay=False), help="the audit's folder"
)
@click.option(
    "--cache-dir",
    default=".lensllm",
    show_default=True,
    help="cache with the candidates' model folders (models/)",
)
def audit_spectra_command(out: str, cache_dir: str) -> int:
    """Add the weight-spectrum (NLPmetrics) metrics of every candidate to a written audit
    (audit.md, audit.json), without re-running the audit."""
    from flows.audit import audit_spectra_flow

    with no_tracebacks_for_input_errors():
        spectral = audit_spectra_flow(out_dir=out, cache_dir=cache_dir)["spectral"]
    print(
        f"lowest {spectral['metric']} picks {spectral['selected']} (RelAcc "
        f"{spectral['rel_acc']:.3f}); report: {out}/audit.md"
    )
    return 0
