# CardioShape headless quick start: `make demo` and `make test` on a fresh Linux machine that
# has only Python >= 3.10 and pip. Both create .venv on first use and install the project into it.
#
#   PYTHON=python3.12 make test    another interpreter
#   TORCH="torch==2.11.0" make demo a torch build of your choice (e.g. matching your CUDA)

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.cardioshape-installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[headless,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cardio demo --out results --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/cardio bench core

clean:
	rm -rf $(VENV) results .pytest_cache
