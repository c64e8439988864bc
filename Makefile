# las-builder: `make demo` and `make test` are all a new user types.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: install system-deps test demo lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@bash scripts/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

system-deps:
	@bash scripts/system-deps.sh

test: install
	$(BIN)/ruff check las_builder tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

demo: install
	@bash scripts/demo.sh $(OUT)

lint: install
	$(BIN)/ruff check las_builder tests benchmarks
	$(BIN)/ruff format --check las_builder tests benchmarks
	$(BIN)/mypy

# Loader first (its figures are merged into benchmarks/results.json), then the build.
bench: install
	@bash scripts/bench-venv.sh
	.venv-bench/bin/python benchmarks/loader_bench.py
	$(BIN)/python benchmarks/build_bench.py

clean:
	rm -rf out .pytest_cache .venv-bench
