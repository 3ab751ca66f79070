"""Model logging with the MLflow transformers flavour, and loading a logged model back.

``mlflow.transformers.log_model`` only exists in fluent form: it runs under a lock with the
tracking URI switched for the duration of the call (:func:`_fluent_uris`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.tracking.client import Tracker

_fluent_lock = threading.Lock()
_URI_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def _fluent_uris(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``tracking_uri`` (tracking and registry) for one call.

    MLflow's own ``_use_tracking_uri`` restores by *unsetting* ``MLFLOW_TRACKING_URI`` when no
    URI was set programmatically, which would wipe a user's environment variable; this restores
    the module globals and both environment variables exactly. Serialised by a lock because
    the fluent URIs are process-global.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _fluent_lock:
        saved_env = {k: os.environ.get(k) for k in _URI_ENV_VARS}
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        try:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
            yield
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _pinned(package: str) -> str:
    from importlib.metadata import version

    # Drop a local build suffix such as "+cpu": pip cannot resolve it from PyPI.
    return f"{package}=={version(package).split('+')[0]}"


def default_pip_requirements() -> list[str]:
    """Pinned requirements to serve a transformers text-generation model."""
    packages = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "accelerate")
    return [_pinned(p) for p in packages]


class _NoHubCardWarnings(logging.Filter):
    """Drops mlflow.transformers' two warnings about a hub model card and licence. The model
    logged here is always a local fine-tuned folder: mlflow looks its path up on the hub as a
    repo id (not one, and the machine may be offline) and then says it found no licence. The
    licence of each built-in candidate is shown by ``lensllm models list``; mlflow still writes
    its LICENSE.txt telling the reader to check the licence. Other warnings pass."""

    DROPPED = ("The model card could not be retrieved", "Unable to find license information")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROPPED)


@contextmanager
def _without_hub_card_warnings() -> Iterator[None]:
    logger = logging.getLogger("mlflow.transformers")
    quiet = _NoHubCardWarnings()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _checked_folder(model_dir: str, max_new_tokens) -> Path:
    folder = Path(model_dir)
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{str(folder)!r} holds no *.safetensors weights; save the merged model with "
            "model.save_pretrained(dir) and tokenizer.save_pretrained(dir)"
        )
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    return folder


def _load_for_logging(folder: Path, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.runtime.construction import model_construction

    with model_construction():
        model = AutoModelForCausalLM.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    return model, AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def log_transformers_model(
    tracker: Tracker,
    run_id: str,
    model_dir: str,
    *,
    max_new_tokens: int = 32,
    artifact_name: str = "model",
    pip_requirements: list[str] | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Log a saved (merged) transformers causal LM folder to a run with the transformers flavour.

    ``model_dir`` must hold safetensors weights and a tokenizer (``save_pretrained`` output;
    merge LoRA adapters with ``merge_and_unload()`` first: logging a PEFT model whose base is a
    local folder reloads with re-initialised base weights). Returns
    ``{"model_uri", "model_id", "artifact_name"}``.

    ``mlflow.transformers.log_model`` only exists in fluent form and reads the process-global
    tracking URI and active experiment, so the LoggedModel is created here with the client (in
    the run's experiment) and the call runs under a lock with the tracking URI switched.
    """
    folder = _checked_folder(model_dir, max_new_tokens)
    import mlflow.transformers

    model, tokenizer = _load_for_logging(folder, trust_remote_code)
    client = tracker.client
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id, name=artifact_name, source_run_id=run_id
    )
    with _fluent_uris(tracker.uri), _without_hub_card_warnings():
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=artifact_name,
            task="text-generation",
            pip_requirements=pip_requirements or default_pip_requirements(),
            model_config={"max_new_tokens": max_new_tokens},
            run_id=run_id,
            model_id=logged.model_id,
        )
    return {
        "model_uri": info.model_uri,
        "model_id": logged.model_id,
        "artifact_name": artifact_name,
    }


def load_transformers_components(tracker: Tracker, model_uri: str) -> dict:
    """Load a logged or registered transformers model as ``{"model", "tokenizer", ...}``
    (e.g. ``models:/<name>@champion``)."""
    import mlflow.transformers

    with _fluent_uris(tracker.uri):
        return mlflow.transformers.load_model(model_uri, return_type="components")
