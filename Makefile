# The two quick-start commands: `make train` and `make test` (`make test-all` adds the slow tests). Each creates .venv if missing.
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

.PHONY: train test test-all lint clean-venv

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

# Tests run on every core (pytest-xdist; tests sharing a resource are grouped onto one worker). `make test`
# leaves out the tests marked slow (many processes, torch.compile, kill -9 twenty times); `make test-all`,
# which CI runs, includes them.
PYTEST := $(BIN)/python -m pytest -q -rs -n auto --dist loadgroup

test: lint
	$(PYTEST) -m "not slow"

test-all: lint
	$(PYTEST)

clean-venv:
	rm -rf $(VENV)
