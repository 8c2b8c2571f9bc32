# reelstream: every target works from a fresh clone with only Python 3.11+ installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo serve lint bench clean docs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	@scripts/system-packages tests/system-packages.txt
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/reelstream demo

serve: $(STAMP)
	$(BIN)/reelstream serve

# The benchmarks (not part of `make test`): installs wrk (apt-get, when root) and py-spy if missing, then
# runs every bench/bench_*.py. Figures go to bench/results/; BENCHMARKS.md explains them.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
		else echo "make bench needs wrk: install it (e.g. sudo apt-get install wrk)"; exit 1; fi; }
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install -q py-spy
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy reelstream schemas stages gateway

# docs/api.md's generated sections, from the OpenAPI document and the topic payloads.
docs: $(STAMP)
	$(BIN)/python -m gateway.apidocs

clean:
	rm -rf $(VENV) .reelstream .pytest_cache .mypy_cache bench/results
