"""Candidate models: names to local model folders, built-ins in a registry, preparation.

* :mod:`tasks.models.builtin`: the registry of built-in families (:data:`BUILTIN`);
  :mod:`tasks.models.smollm2` (the real SmolLM2-135M-Instruct and derived variants),
  :mod:`tasks.models.gemma3` (Gemma-3-270M base, on request under the Gemma terms, and derived
  variants) and :mod:`tasks.models.tiny_llama` (a tiny offline model for tests) are registered
  here;
* :mod:`tasks.models.resolve`: :func:`resolve_candidate`, :func:`check_causal_lm`,
  :func:`describe_candidate`;
* :mod:`tasks.models.store`: the model cache (built once, atomically).
"""

from __future__ import annotations

import os
from typing import Any

from prefect import task

from tasks.models import gemma3, smollm2, tiny_llama
from tasks.models.builtin import BUILTIN, builtin_names, family_of
from tasks.models.resolve import check_causal_lm, describe_candidate, resolve_candidate
from tasks.models.store import build_metadata, cache_root, is_complete
from tasks.records.errors import CandidateError, HubUnavailableError

for _family in (smollm2.FAMILY, gemma3.FAMILY, tiny_llama.FAMILY):
    BUILTIN.register(_family.name)(_family)

__all__ = [
    "BUILTIN",
    "CandidateError",
    "builtin_names",
    "check_causal_lm",
    "describe_candidate",
    "prepare",
    "resolve_candidate",
    "resolve_candidate_task",
]


@task(
    name="resolve-candidate",
    task_run_name="resolve {name}",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=lambda task, run, state: _is_transient(state),
)
def resolve_candidate_task(
    name: str, cache_dir: str | None = None, trust_remote_code: bool = False
) -> str:
    """Prefect task: :func:`resolve_candidate` (retries only when the hub is unreachable)."""
    return resolve_candidate(name, cache_dir=cache_dir, trust_remote_code=trust_remote_code)


def _is_transient(state: Any) -> bool:
    try:
        state.result()
    except HubUnavailableError:
        return not os.environ.get("HF_HUB_OFFLINE")  # offline on purpose: retrying is useless
    except Exception:  # any other failure is an input or programming error: no retry
        return False
    return False


def prepare(
    names: list[str] | tuple[str, ...] = ("smollm2-135m",),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    install: bool = True,
    accept_license: str | None = None,
) -> list[dict]:
    """Install what the named built-ins need and build them into the cache.

    Returns one dict per name: ``name``, ``path``, ``build_time_s`` (of the conversion, when it
    happened; the cached value otherwise), ``cached`` (already present) and the description.
    """
    families = {family_of(name) for name in names} - {None}
    unknown = [name for name in names if family_of(name) is None]
    if unknown:
        from tasks.models.resolve import unknown_name_error

        raise unknown_name_error(unknown[0])
    if install:
        for family in sorted(families, key=lambda f: f.name):
            if family.install is not None:
                family.install(accept_license)
    root = cache_root(cache_dir)
    report = []
    for name in names:
        cached = is_complete(root / name)
        path = resolve_candidate(name, cache_dir=root)
        report.append(
            {
                "name": name,
                "path": path,
                "cached": cached,
                "build_time_s": build_metadata(path).get("build_time_s"),
                **describe_candidate(path),
            }
        )
    return report
