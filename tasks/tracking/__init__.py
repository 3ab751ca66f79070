"""All MLflow code of LensLLM, one module per job; nothing else in the project imports mlflow.

* :mod:`.tags`: every tag key, defined once;
* :mod:`.secrets`: credentials never reach MLflow;
* :mod:`.client`: :class:`Tracker`, one tracking URI and the generic run operations;
* :mod:`.runs`: selection runs (resumable), candidate runs, probes with dataset inputs, the
  benchmark run;
* :mod:`.selection`: a whole selection logged;
* :mod:`.checked_runs`: the live calibration record read back (every check at the target);
* :mod:`.models`: model logging with the transformers flavour;
* :mod:`.registry`: :class:`ModelRegistry`, versions, aliases, the promotion gate applied.

``from tasks.tracking import Tracker`` imports MLflow on first use only, so the tag keys
(``tasks.tracking.tags``) are cheap to import.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Tracker": "tasks.tracking.client",
    "default_tracking_uri": "tasks.tracking.client",
    "ModelRegistry": "tasks.tracking.model_registry",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tasks.tracking' has no attribute {name!r}")
