"""The ``lensllm`` command line (click): ``cli_app`` holds the group and :func:`main`; each
``commands_*`` module holds one group of commands; ``cli_options`` the options they share."""

from flows.cli.cli_app import lensllm, main
from flows.cli.console_errors import is_input_error

__all__ = ["is_input_error", "lensllm", "main"]
