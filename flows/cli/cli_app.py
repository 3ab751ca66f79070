"""The ``lensllm`` group: every command, and :func:`main`, which maps errors to exit statuses."""

from __future__ import annotations

import sys

import click

from flows.cli import (
    commands_benchmark,
    commands_error_model,
    commands_models,
    commands_pipeline,
    commands_registry,
    commands_stack,
    commands_tracking,
)
from flows.cli.cli_options import EXIT_CODES_HELP
from tasks.records.errors import LensLLMUserError


@click.group(
    "lensllm",
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def lensllm() -> None:
    """Select the open LLM to fine-tune from cheap probes."""


for _command in (
    commands_pipeline.select_command,
    commands_pipeline.audit_command,
    commands_pipeline.audit_spectra_command,
    commands_benchmark.benchmark_command,
    commands_error_model.calibration_group(commands_tracking.calibration_command),
    commands_tracking.ui_command,
    commands_models.models_group,
    commands_registry.register_command,
    commands_registry.registry_group,
    commands_stack.stack_group,
    commands_stack.deploy_command,
    commands_stack.worker_command,
):
    lensllm.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run a ``lensllm`` command and return its exit status. An error written for the user
    (:func:`~flows.cli.console_errors.is_input_error`) prints one ``lensllm: error:`` line
    saying what to fix and returns its exit code (2 bad input, 3 a server that does not
    answer); a command-line mistake prints click's usage line and returns 2; other errors
    propagate with their traceback."""
    try:
        status = lensllm.main(args=argv, prog_name="lensllm", standalone_mode=False)
    except LensLLMUserError as err:
        print(f"lensllm: error: {err}", file=sys.stderr)
        return err.exit_code
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:  # Ctrl-C
        print("lensllm: interrupted", file=sys.stderr)
        return 130
    return status or 0
