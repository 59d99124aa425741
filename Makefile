# The two Quickstart commands live here so that they work on a fresh machine:
# each first makes sure the toolchain and the package are installed.
.PHONY: demo test setup lint

setup:
	@bash scripts/setup.sh

demo: setup
	vmirom demo

test: setup
	python3 -m pytest

lint: setup
	ruff check src tests
