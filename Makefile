# mgsv: `make demo` runs index -> suggest -> render end to end; `make test` runs the tests.
# Both set up their own virtual environment (.venv) on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean completions

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,scale,lint]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff on the whole repository; mypy on the library ([tool.mypy] in pyproject.toml), which finds
# mgsv_cli.models (the models/ folder, installed under that name) through this link.
lint: $(STAMP)
	mkdir -p build/typecheck/mgsv_cli && ln -sfn ../../../models build/typecheck/mgsv_cli/models
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/python -m mgsv_cli.demo demo_out

bench: $(STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

completions: $(STAMP)
	$(BIN)/python -m mgsv_cli.completion completions

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mypy_cache .ruff_cache build/typecheck
