# Entry points. `make demo` installs everything into .venv and runs the embedded demo sweep
# end to end (ending in reports/index.html); `make test` runs the whole test suite; `make check`
# runs the linters: ruff (lint + format), snakefmt and the import-layering contracts.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export E3_JAX_CACHE ?= $(abspath .jax_cache)
CORES ?= 2

.PHONY: setup demo test lint check clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[workflow,test,monitor]"
	touch $@

demo: setup
	$(BIN)/snakemake --cores $(CORES)

test: setup
	$(BIN)/python -m pytest -n $(CORES) --dist loadfile; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/snakemake --lint

check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/
	$(BIN)/lint-imports

clean-results:
	rm -rf results logs reports/*.html reports/*/ .snakemake
