# The two commands a newcomer needs: `make serve` and `make test` (see README.md).
# Both create .venv and install the project into it first, once per change of pyproject.toml.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install serve test lint docs bench gpu-check gpu-wheels

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/musicgen-bento serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The manual (docs/), served with live reload at http://127.0.0.1:8000.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

test: lint
	$(BIN)/pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_http_overhead.py
	$(BIN)/python bench/bench_decode_step.py
	$(BIN)/python bench/bench_queue_overhead.py

# On a GPU node: the check of the GPU path, one table and gpu-check.json (docs/benchmarks.md).
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py --out gpu-check.json

# The wheels a lent GPU machine lacks for that check, into .gpu-wheels/ (bench/gpu_wheels.py).
gpu-wheels: $(STAMP)
	$(BIN)/python bench/gpu_wheels.py
