# Fresh machine: `make run` installs everything into .venv/ and trains on the built-in data;
# `make test` runs the suite. Both reinstall only when pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
TEST_WORKERS ?= 2

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install run test lint format bench clean server server-stop

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,mlflow]'
	touch $(STAMP)

run: install
	$(PY) -m flows.train $(ARGS)

# Two pytest-xdist workers, a test file to each at a time (files share their fixtures' runs):
# most tests wait on servers and subprocesses as much as they compute. TEST_WORKERS=0 runs serially.
test: install
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

# A lasting Prefect server with its UI; `make run` and `python -m flows.train` use it when it runs.
server: install
	$(VENV)/bin/prefect server start --background
	$(PY) -m flows.server
	@echo "make run and python -m flows.train now use this server: their runs appear in its UI."

server-stop: install
	$(VENV)/bin/prefect server stop

# Whole-process timings and peak memory; QUICK=1 skips the 5M-row step, SECTIONS=default,overhead picks.
bench: install
	$(PY) benchmarks/bench.py $(if $(QUICK),--quick,) $(if $(SECTIONS),--sections $(SECTIONS),)

lint: install
	$(PY) -m ruff check flows tasks tests deployments benchmarks
	$(PY) -m ruff format --check flows tasks tests deployments benchmarks

format: install
	$(PY) -m ruff format flows tasks tests deployments benchmarks
	$(PY) -m ruff check --fix flows tasks tests deployments benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
