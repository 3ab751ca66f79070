"""``lensllm register`` (one model into the registry, through the promotion gate) and
``lensllm registry rollback|history``."""

from __future__ import annotations

import json
import math

import click

from flows.cli.cli_options import tracker_for, tracking_uri_option

_NAME_HELP = "registered model name (one per task)"


@click.group("registry")
def registry_group() -> None:
    """Model registry operations."""


@registry_group.command("rollback")
@click.option("--name", required=True, help=_NAME_HELP)
@tracking_uri_option
@click.option("--reason", help="why (recorded in the registry history)")
def rollback_command(name: str, tracking_uri: str | None, reason: str | None) -> int:
    """Move the champion alias back to the previous version."""
    from tasks.tracking.model_registry import ModelRegistry

    tracker = tracker_for(tracking_uri)
    tracker.check_reachable()
    result = ModelRegistry(tracker, name).rollback(reason)
    print(
        f"{name}: champion moved back from v{result['rolled_back_from']} "
        f"to v{result['champion']} ({tracker.display_uri})"
    )
    return 0


@registry_group.command("history")
@click.option("--name", required=True, help=_NAME_HELP)
@tracking_uri_option
def history_command(name: str, tracking_uri: str | None) -> int:
    """Every move of the champion alias, with its reason."""
    from tasks.tracking.model_registry import ModelRegistry

    tracker = tracker_for(tracking_uri)
    tracker.check_reachable()
    entries = ModelRegistry(tracker, name).history()
    if not entries:
        print(f"{name}: no alias moves recorded ({tracker.display_uri})")
        return 0
    print(f"{name}: {len(entries)} moves of the champion alias ({tracker.display_uri})")
    for e in entries:
        print(
            f"  {e['seq']:>3}. {e['time']}  v{e['before'] or '-'} -> v{e['after'] or '-'}  "
            f"{e['decision']}: {e['reason']}"
        )
        links = {"selection": e.get("selection_run"), "flow run": e.get("flow_run")}
        shown = ", ".join(f"{k} {v}" for k, v in links.items() if v)
        if shown:
            print(f"       ({shown})")
    return 0


def _tags(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> dict:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} must look like KEY=VALUE", ctx, param)
        tags[key] = value
    return tags


@click.command("register", short_help="Register a model and run the promotion gate.")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help=_NAME_HELP)
@click.option("--task-key", required=True, help="the task's key (the champion is kept per task)")
@click.option("--selection-key", required=True, help="the selection's key; a re-run with the "
              "same key creates no new version")  # fmt: skip
@click.option(
    "--test-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSONL of {prompt, target}: the shared test split",
)
@click.option(
    "--predicted-loss", type=float, default=float("nan"), help="the selection's prediction"
)
@click.option("--interval", type=(float, float), default=(float("nan"),) * 2, metavar="LOW HIGH",
              help="its prediction interval")  # fmt: skip
@click.option("--selector", default="manual", show_default=True, help="what chose the model")
@click.option("--rank-on", default="bits_per_byte", show_default=True, help="the loss measured")
@click.option("--tag", "tags", multiple=True, callback=_tags, metavar="KEY=VALUE",
              help="a tag of the version (repeatable)")  # fmt: skip
@tracking_uri_option
@click.option("--experiment", default="lensllm-register", show_default=True, help="MLflow "
              "experiment of the registration run")  # fmt: skip
@click.option(
    "--margin",
    type=float,
    default=0.0,
    show_default=True,
    help="promotion gate: margin on measured loss",
)
@click.option(
    "--min-confidence",
    type=float,
    default=0.9,
    show_default=True,
    help="promotion gate: P(better) needed",
)
@click.option("--max-new-tokens", type=int, default=32, show_default=True, help="generation "
              "length of the logged model")  # fmt: skip
def register_command(model_dir: str, **options) -> int:
    """Register MODEL_DIR (a saved, merged model) with alias candidate, measured on the test
    file, and move champion if the promotion gate passes. Prints the outcome as JSON."""
    from flows.register import register_flow

    result = register_flow(*register_arguments(model_dir, options))
    print(json.dumps(result.model_dump(mode="json"), indent=2))
    return 0


def register_arguments(model_dir: str, options: dict):
    """``register_flow``'s records from the command's options: the registration request and
    the gate's inputs (the model measured on the test file)."""
    from pathlib import Path

    from tasks.data.splits import fingerprint
    from tasks.records.schema import GateInputs, ProbeSpec, RegistrationRequest
    from tasks.tracking import tags as T
    from tasks.training.measure import measure_folder

    lines = Path(options["test_file"]).read_text().splitlines()
    test = [json.loads(line) for line in lines if line.strip()]
    test = [{"prompt": r["prompt"], "target": r["target"]} for r in test]
    spec, split, rank_on = ProbeSpec(), fingerprint(test), options["rank_on"]
    measurement = measure_folder(model_dir, test, spec, rank_on=rank_on, fingerprint=split)
    gate = GateInputs(
        test=test,
        test_fingerprint=split,
        spec=spec,
        rank_on=rank_on,
        measurement=measurement,
        margin=options["margin"],
        min_confidence=options["min_confidence"],
    )
    low, high = options["interval"]
    request = RegistrationRequest(
        model_dir=model_dir,
        registered_name=options["name"],
        task_key=options["task_key"],
        selection_key=options["selection_key"],
        predicted_loss=None if math.isnan(options["predicted_loss"]) else options["predicted_loss"],
        interval=None if math.isnan(low) or math.isnan(high) else (low, high),
        selector=options["selector"],
        data_fingerprint=options["tags"].get(T.DATA_FINGERPRINT),
        tags=options["tags"],
        tracking_uri=tracker_for(options["tracking_uri"]).uri,
        experiment=options["experiment"],
        max_new_tokens=options["max_new_tokens"],
    )
    return request, gate
