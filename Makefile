# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine first.
VENV := .venv
BIN := $(VENV)/bin
export BENTOML_DO_NOT_TRACK := true

.PHONY: setup demo test lint

$(VENV)/.tutti-installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: $(VENV)/.tutti-installed

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check .
