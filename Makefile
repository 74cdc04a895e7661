# mgsv: `make demo` runs index -> suggest -> render end to end; `make test` runs the tests.
# Both set up their own virtual environment (.venv) on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean completions

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,scale]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m mgsv_cli.demo demo_out

bench: $(STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

completions: $(STAMP)
	$(BIN)/python -m mgsv_cli.completion completions

clean:
	rm -rf $(VENV) demo_out .pytest_cache
