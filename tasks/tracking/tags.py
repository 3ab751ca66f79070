"""Every tag key LensLLM writes to MLflow, defined once and used by name everywhere.

Runs and registered versions share the ``lensllm.*`` keys; the MLflow UI filters on them and
the pipeline finds its own runs and versions by them (resume, idempotent registration).
"""

from __future__ import annotations

PREFIX = "lensllm."  # every project tag key starts with it

# Provenance: on every selection run, candidate run and registered version.
GIT_COMMIT = "lensllm.git_commit"
CONFIG_HASH = "lensllm.config_hash"
DATA_FINGERPRINT = "lensllm.data_fingerprint"
SELECTION_KEY = "lensllm.selection_key"  # config hash + data fingerprint: one selection
TASK = "lensllm.task"  # the config's name: champions are compared per task
PROVENANCE = (GIT_COMMIT, CONFIG_HASH, DATA_FINGERPRINT, SELECTION_KEY, TASK)

# Runs
RUN_KIND = "lensllm.run_kind"  # one of RUN_KINDS
RUN_KINDS = ("selection", "candidate", "register", "benchmark")
CANDIDATE = "lensllm.candidate"
RESUMED = "lensllm.resumed"  # how often an interrupted selection run was resumed
DEVICE = "lensllm.device"
DROPPED_REASON = "lensllm.dropped_reason"

# Registered versions: the prediction and the promotion gate
SELECTOR = "lensllm.selector"
PREDICTED_LOSS = "lensllm.predicted_loss"
INTERVAL_LOW = "lensllm.interval_low"
INTERVAL_HIGH = "lensllm.interval_high"
INTERVAL_LEVEL = "lensllm.interval_level"  # nominal level of the interval (0.9: 90 %)
INTERVAL_METHOD = "lensllm.interval_method"
P_BEST = "lensllm.p_best"  # probability the selected candidate is the best at the target
PREVIOUS_CHAMPION = "lensllm.previous_champion"
GATE_REASON = "lensllm.gate_reason"
ROLLED_BACK = "lensllm.rolled_back"

# Dataset inputs (tags of an ``mlflow.log_input`` entry)
INPUT_FINGERPRINT = "lensllm.fingerprint"
INPUT_SIZE = "lensllm.size"
INPUT_CONTEXT = "mlflow.data.context"

# MLflow's own keys that the project sets
PARENT_RUN = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"

# Registry aliases
ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"
