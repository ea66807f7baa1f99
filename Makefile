# Every target creates .venv (python3 -m venv) and installs the project when the
# venv is missing or pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test bench lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

demo: $(STAMP)
	MPLBACKEND=Agg $(BIN)/hybridda twin --model lorenz96 --method etkf --ensemble-size 24 \
		--inflation 1.02 --cycles 2000 --burn-in 500 --seed 0 --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check hybridda tests experiments paper
	$(BIN)/ruff format --check hybridda tests experiments paper

format: $(STAMP)
	$(BIN)/ruff format hybridda tests experiments paper
	$(BIN)/ruff check --fix hybridda tests experiments paper

# One pytest worker per core (pytest-xdist), whole files per worker so module-scoped
# fixtures (a paper script's --quick run) are built once. Most of the suite's time is
# XLA compilation, which is single-threaded, so two workers on two cores nearly halve it.
# Files go out in collection order, the slowest first (tests/conftest.py HEAVY_FILES_FIRST).
TEST_WORKERS ?= auto

test: lint
	MPLBACKEND=Agg $(BIN)/python -m pytest -q --durations=10 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: $(BENCH_STAMP)
	MPLBACKEND=Agg $(BIN)/python experiments/benchmarks/dapper_parity.py --out runs/bench

clean:
	rm -rf runs .pytest_cache .ruff_cache .jax_cache
