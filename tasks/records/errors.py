"""Errors the user can fix, by type; the CLI maps them to exit statuses.

Every error written for the user derives from :class:`LensLLMUserError`: its message says what
was wrong and how to fix it, and ``lensllm`` prints it as one ``lensllm: error:`` line with the
class's ``exit_code`` (no traceback). Anything else is a bug and keeps its traceback (exit 1).

========  ==================================================================================
exit      meaning
========  ==================================================================================
2         bad input: config, data, candidate models, loss tables, a probe that diverged or
          ran out of memory (:class:`LensLLMUserError` and its subclasses below)
3         a server or remote source that should answer does not (:class:`ServerUnavailableError`:
          MLflow tracking server or its artifact store, the model or data hub, the local stack):
          start it or fix its address and run the same command again; nothing finished is lost
========  ==================================================================================

The classes also derive from the matching builtin (``ValueError``, ``ConnectionError``, ...),
so library-style ``except ValueError`` keeps working.
"""

from __future__ import annotations


class LensLLMUserError(Exception):
    """An error the user can fix; the message says how. Exit status 2."""

    exit_code = 2


class ConfigError(LensLLMUserError, ValueError):
    """An invalid config; the message names the field and how to fix it."""


class DataError(LensLLMUserError, ValueError):
    """The data set or its settings cannot give the probes what they need; the message says
    what to change (a field mapping, a size, a larger data set)."""


class MissingFileError(LensLLMUserError, FileNotFoundError):
    """A file or folder that was named, or that a Debian or PyPI package should install, is
    missing; the message says which and how to get it."""


class CandidateError(LensLLMUserError, ValueError):
    """A candidate name or folder cannot be turned into a causal language model."""


class LicenseNotAcceptedError(LensLLMUserError, ValueError):
    """A model whose licence needs consent was asked for without it; the message names the
    licence and the flag that accepts it (checked before anything is downloaded)."""


class AuditFileError(LensLLMUserError, ValueError):
    """An ``audit.json`` that the calibration record cannot read; the message names the file."""


class LossTableError(LensLLMUserError, ValueError):
    """A loss table that the replay benchmark cannot use; the message names the problem."""


class ErrorPriorFileError(LensLLMUserError, ValueError):
    """An error-prior file (``configs/error_prior.json``) that cannot be read or does not
    match this version of LensLLM; the message says how to rebuild it."""


class ProbeDivergedError(LensLLMUserError, ValueError):
    """A probe diverged and there is no loss to rank it by (``candidate`` and ``size`` name it
    when known)."""

    def __init__(self, message: str, *, candidate: str | None = None, size: int | None = None):
        super().__init__(message)
        self.candidate = candidate
        self.size = size


class ProbeOutOfMemoryError(LensLLMUserError, RuntimeError):
    """A probe ran out of memory; the message names the probe and the settings to lower."""


class RegistryError(LensLLMUserError, ValueError):
    """A registry operation that cannot be done (no champion to roll back, ...)."""


class ServerUnavailableError(LensLLMUserError, ConnectionError):
    """A server that should answer does not (exit status 3): start it or fix its address,
    then run the same command again."""

    exit_code = 3


class TrackingUnavailableError(ServerUnavailableError):
    """The MLflow tracking server (or its artifact store) cannot be reached."""


class HubUnavailableError(ServerUnavailableError):
    """A hub model id was given but the model hub cannot be reached."""


class DataSourceUnavailableError(ServerUnavailableError):
    """A hub data set was named but cannot be loaded from here (hub offline or wrong id)."""


EXIT_BAD_INPUT = LensLLMUserError.exit_code
EXIT_UNREACHABLE = ServerUnavailableError.exit_code
