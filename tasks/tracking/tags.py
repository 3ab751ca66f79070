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
PRECISION = "lensllm.precision"  # fp32 or bf16: the resolved probe.precision of every probe
PROVENANCE = (GIT_COMMIT, CONFIG_HASH, DATA_FINGERPRINT, SELECTION_KEY, TASK, PRECISION)

# Runs
RUN_KIND = "lensllm.run_kind"  # one of RUN_KINDS
RUN_KINDS = ("selection", "candidate", "register", "benchmark")
CANDIDATE = "lensllm.candidate"
CANDIDATE_SELECTED = "lensllm.selected"  # on a selection run: the winner
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
MEASURED_PREFIX = "lensllm.measured."  # + test fingerprint: a version's measured loss there
MEASURED_LOSS = "lensllm.measured_loss"  # the version's measured loss on its selection's split
TEST_FINGERPRINT = "lensllm.test_fingerprint"
CHAMPION_MEASURED_LOSS = "lensllm.champion_measured_loss"  # the champion's, on the same split
P_BETTER = "lensllm.p_better"  # paired bootstrap P(challenger better than the champion)
PREVIOUS_CHAMPION = "lensllm.previous_champion"
GATE_REASON = "lensllm.gate_reason"  # the decision of the version's first gate (or promotion)
GATE_LAST_CHECK = "lensllm.gate_last_check"  # a later re-run's decision, kept apart
ROLLED_BACK = "lensllm.rolled_back"
# sha256 over the registered folder's files: with DATA_FINGERPRINT, one version per model
WEIGHTS_SHA256 = "lensllm.weights_sha256"
# On a run: the version that holds its model (the one it registered, or an identical earlier one)
REGISTERED_MODEL = "lensllm.registered_model"
REGISTERED_VERSION = "lensllm.registered_version"

# Realized against predicted: a candidate trained at the target and measured (on its own run;
# the winner's also on the selection run and the registered version)
TARGET_MEASURED_LOSS = "lensllm.target_measured_loss"
TARGET_PREDICTED_LOSS = "lensllm.target_predicted_loss"
TARGET_LOG_ERROR = "lensllm.target_log_error"  # ln(measured / predicted)
TARGET_INTERVAL_HELD = "lensllm.target_interval_held"  # "true" / "false" / "no interval"
TARGET_EXAMPLES = "lensllm.target_examples"  # what the training at the target saw

# Dataset inputs (tags of an ``mlflow.log_input`` entry)
INPUT_FINGERPRINT = "lensllm.fingerprint"
INPUT_SIZE = "lensllm.size"
INPUT_CONTEXT = "mlflow.data.context"

# MLflow's own keys that the project sets
PARENT_RUN = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"  # a run's description in the UI (markdown)
EXPERIMENT_KIND = "mlflow.experimentKind"  # the UI's mode for an experiment
EXPERIMENT_KIND_TRAINING = "custom_model_development"  # training runs, not GenAI traces
MODEL_VERSIONS = "mlflow.modelVersions"  # on a logged model: the versions registered from it

# Registry history: one registered-model tag per alias move, HISTORY_PREFIX + a 6-digit count
HISTORY_PREFIX = "lensllm.history."

# Registry aliases
ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"
