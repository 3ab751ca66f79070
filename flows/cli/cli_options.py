"""Options shared by several ``lensllm`` commands: declared once, with one help text each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from tasks.records.errors import EXIT_BAD_INPUT, EXIT_UNREACHABLE

EXIT_CODES_HELP = (
    f"Exit status: 0 success, 1 a bug (with its traceback), {EXIT_BAD_INPUT} bad input "
    f"(config, data, candidates, tables), {EXIT_UNREACHABLE} a server that should answer does not "
    "(MLflow, S3, the hub): start it and run the same command again."
)

TRACKING_URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else .lensllm/mlflow.db)"
PREFECT_API_HELP = (
    "Prefect API URL (default: $PREFECT_API_URL, else a temporary Prefect API for this command)"
)

tracking_uri_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI", help=TRACKING_URI_HELP
)
prefect_api_option = click.option(
    "--prefect-api-url", envvar="PREFECT_API_URL", metavar="URL", help=PREFECT_API_HELP
)
config_option = click.option(
    "--config", required=True, metavar="PATH", help="YAML config (see configs/demo.yaml)"
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a config value, e.g. --set probe.epochs=3 (repeatable)",
)
out_option = click.option("--out", required=True, metavar="DIR", help="output folder")
root_option = click.option(
    "--root",
    metavar="DIR",
    help="stack folder (default: $LENSLLM_STACK_ROOT or .lensllm/stack in the project)",
)


def tracker_for(tracking_uri: str | None):
    """The :class:`~tasks.tracking.client.Tracker` of ``--tracking-uri`` (the option already
    holds ``$MLFLOW_TRACKING_URI`` when it was not given), else of the local store."""
    from tasks.tracking.client import Tracker

    return Tracker(tracking_uri) if tracking_uri else Tracker.local()


@contextmanager
def prefect_api(url: str | None) -> Iterator[None]:
    """Flows started inside talk to the Prefect API at ``url``; without one, Prefect's own
    setting decides (none set: the flow starts a temporary API of its own)."""
    if not url:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        yield
