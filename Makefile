# The two Quickstart commands live here so that they work on a fresh machine: each first runs
# scripts/setup.sh (Debian packages, the project virtual environment $(VENV) with vmirom installed
# editable, the patched engine), then runs inside that environment.
.PHONY: demo test setup lint

VENV ?= .venv
export VMIROM_VENV := $(VENV)

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/vmirom demo

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check src tests
