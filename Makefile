# `make repro` / `make test` work on a fresh machine: they create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV := .venv
STAMP := $(VENV)/.installed
PYTHON ?= python3
# The venv's dvc, mlflow and python for the recipes below (the stage commands find the venv
# themselves: stages/python).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv repro test ui bench docs clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 \
	  | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $(STAMP)

venv: $(STAMP)

repro: venv
	dvc repro

# One pytest worker per CPU (pytest-xdist; PYTEST_WORKERS=1 for one), each test file on one
# worker, so a file's module fixtures (a trained tiny pipeline) are built once. Files are
# handed out in collection order (--no-loadscope-reorder: not xdist's largest-first), which
# tests/conftest.py sets: the end-to-end file first, then the longest ones.
PYTEST_WORKERS ?= logical
test: venv
	python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# MLflow UI on the project's store, loopback only, one worker (a light server). A store URI in
# MLFLOW_TRACKING_URI (sqlite:, postgresql:, a path) is served instead; an http(s) URI is a
# tracking server that already has its UI, so there is nothing to start.
UI_PORT ?= 5000
ui: venv
	@case "$${MLFLOW_TRACKING_URI:-}" in \
	  http://*|https://*) echo "MLFLOW_TRACKING_URI=$$MLFLOW_TRACKING_URI is a tracking server: open it in a browser" \
	    "(unset MLFLOW_TRACKING_URI to serve the local store sqlite:///$(CURDIR)/mlflow.db)";; \
	  *) MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec mlflow server --host 127.0.0.1 --port $(UI_PORT) --workers 1 \
	       --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}";; \
	esac

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; python $$b || exit 1; done

# docs/cli.md from the commands' argparse definitions (tests/test_docs.py fails when it is stale).
docs: venv
	python -m mobileast params-doc
	python -m mobileast.cli_docs docs/cli.md

clean-venv:
	rm -rf $(VENV)
