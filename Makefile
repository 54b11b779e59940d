# The two quick-start commands: `make train` and `make test` (`make test-quick` leaves the slow tests out).
# Each creates .venv if missing.
# TORCH pins the torch wheel installed first (set TORCH=torch to take your platform's default build).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
ARGS ?=
BIN := $(VENV)/bin

# A data folder beside the checkout (../shared/data, as on this project's offline machines and CI) serves
# tiny Shakespeare and the GPT-2 BPE without a download, unless GPTFORGE_DATA_DIR already names one.
ifeq ($(origin GPTFORGE_DATA_DIR),undefined)
ifneq ($(wildcard ../shared/data/tinyshakespeare.txt),)
export GPTFORGE_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: train test test-quick fuzz lint clean-venv

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev,app]"
	touch $@

train: $(VENV)/.installed
	$(BIN)/gptforge train $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks

# Tests run on every core (pytest-xdist; tests sharing a resource are grouped onto one worker). `make test`,
# which CI runs, runs them all; `make test-quick` leaves out those marked slow (many processes,
# torch.compile, kill -9 twenty times) while you work.
PYTEST := $(BIN)/python -m pytest -q -rs -n auto --dist loadgroup --durations=10

test: lint
	$(PYTEST)

test-quick: lint
	$(PYTEST) -m "not slow"

# The property tests (hypothesis) on new random examples, ten times as many as `make test`'s fixed ones, with a
# deadline per example against hangs. A failure prints the example to add as an @example.
fuzz: lint
	$(PYTEST) --hypothesis-profile=fuzz --hypothesis-show-statistics -p no:cacheprovider -m "not gpu" \
		tests/test_fuzz.py tests/test_generate.py tests/test_tokenizer.py tests/test_sizing.py tests/test_validation.py

clean-venv:
	rm -rf $(VENV)
