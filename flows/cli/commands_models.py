"""``lensllm models list|prepare``: the built-in candidate models."""

from __future__ import annotations

import click


@click.group("models")
def models_group() -> None:
    """Candidate models."""


@models_group.command("list")
def list_command() -> int:
    """The built-in candidates and where they come from."""
    from tasks.models import BUILTIN

    for name in BUILTIN.names():
        family = BUILTIN.get(name)
        print(f"{', '.join(family.examples):<58} {family.source}")
    return 0


@models_group.command("prepare")
@click.argument("names", nargs=-1)
@click.option(
    "--accept-license",
    metavar="LICENSE",
    help="accept the licence of models that need consent: 'gemma' accepts the Gemma Terms "
    "of Use (https://ai.google.dev/gemma/terms) for gemma3-270m*",
)
@click.option(
    "--cache-dir",
    metavar="DIR",
    help="model cache to build into (default: .lensllm/models in the project; a config's "
    "cache_dir + /models)",
)
def prepare_command(names: tuple[str, ...], accept_license: str | None, cache_dir: str | None):
    """Install and convert built-in models (offline cache); NAMES default to smollm2-135m."""
    from tasks.models import prepare

    for info in prepare(list(names) or ["smollm2-135m"], cache_dir=cache_dir,
                        accept_license=accept_license):  # fmt: skip
        print(info)
    return 0
