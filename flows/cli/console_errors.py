"""How ``lensllm`` shows errors: one line for an error written for the user, a traceback for a
bug, and no traceback in Prefect's console log for an input error."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.records.errors import LensLLMUserError


def is_input_error(err: BaseException) -> bool:
    """True when ``err`` was written for the user (a :class:`LensLLMUserError`): one line, its
    ``exit_code``. Anything else is a bug and keeps its traceback."""
    return isinstance(err, LensLLMUserError)


class _InputErrorWithoutTraceback(logging.Filter):
    """Prefect logs a failed task or flow run with the exception's traceback. For an input error
    the console shows Prefect's line without it (the CLI prints the one-line error last); the
    Prefect API's copy of the log keeps the traceback. The record is copied, not changed."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not is_input_error(exc):
            return True
        clean = logging.makeLogRecord(record.__dict__)
        clean.exc_info, clean.exc_text = None, None
        self.handler.handle(clean)
        return False


@contextmanager
def no_tracebacks_for_input_errors() -> Iterator[None]:
    """While a flow runs: the console handlers drop the tracebacks of input errors."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    filters = [(h, _InputErrorWithoutTraceback(h)) for h in handlers]
    for handler, flt in filters:
        handler.addFilter(flt)
    try:
        yield
    finally:
        for handler, flt in filters:
            handler.removeFilter(flt)
