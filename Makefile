# `make repro` / `make test` work on a fresh machine: they create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV := .venv
STAMP := $(VENV)/.installed
PYTHON ?= python3
# The venv's dvc, mlflow and python for the recipes below (the stage commands find the venv
# themselves: stages/python).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv repro test ui bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 \
	  | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $(STAMP)

venv: $(STAMP)

repro: venv
	dvc repro

test: venv
	python -m pytest

# MLflow UI on the project's store, loopback only, one worker (about 0.5 GB of RAM).
UI_PORT ?= 5000
ui: venv
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --host 127.0.0.1 --port $(UI_PORT) --workers 1 \
	  --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}"

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
