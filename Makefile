# shipway: day-to-day commands. `make test` works from a fresh clone (it provisions first).
SHELL := /bin/bash
.DEFAULT_GOAL := help

BIN := .venv/bin
PYTEST_ARGS ?=

.PHONY: help provision lint format test test-chaos test-fuzz test-cluster demo bench bench-quick bench-promote clean distclean

help:
	@echo "make provision  install system packages, .venv, Docker engine and base image (idempotent)"
	@echo "make lint       ruff check, ruff format --check, mypy"
	@echo "make format     apply ruff's fixes and formatting"
	@echo "make test       provision, lint, then the whole test suite (PYTEST_ARGS=... to narrow)"
	@echo "make test-chaos provision, then the full chaos suite (tests/chaos; restarts dockerd!)"
	@echo "make test-fuzz  provision, then a long API fuzz run (SHIPWAY_FUZZ_EXAMPLES=200 per operation)"
	@echo "make test-cluster  provision, then the multi-node suite: a 3-node Docker Swarm + registry (root)"
	@echo "make demo       provision, then a guided tour of the API against 'shipway up'"
	@echo "make bench      every benchmark against its raw baseline (writes bench/RESULTS.md)"
	@echo "make bench-quick  the same, small sizes (a smoke run; BENCH_OUTPUT=... to keep it)"
	@echo "make clean      remove scratch data and caches (keeps .venv)"
	@echo "make distclean  clean, and remove .venv"

provision:
	@bash scripts/provision.sh

$(BIN)/ruff $(BIN)/pytest:
	@echo "no virtualenv yet: run 'make provision' first" >&2
	@exit 1

lint: $(BIN)/ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(BIN)/ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: provision
	@$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q tests $(PYTEST_ARGS)

# The full-size chaos suite (docs/chaos.md). `make test` runs tests/chaos too, in smoke size.
# SHIPWAY_CHAOS_DOCKER=1 restarts the Docker engine: every container on it is stopped.
test-chaos: provision
	SHIPWAY_CHAOS_SCALE=full SHIPWAY_CHAOS_DOCKER=$${SHIPWAY_CHAOS_DOCKER:-1} \
		$(BIN)/pytest -q -p no:cacheprovider tests/chaos $(PYTEST_ARGS)

# `make test` fuzzes every API operation with 25 fixed examples; this explores 200 new ones.
test-fuzz: provision
	SHIPWAY_FUZZ_EXAMPLES=$${SHIPWAY_FUZZ_EXAMPLES:-200} \
		$(BIN)/pytest -q -p no:cacheprovider tests/test_fuzz_api.py $(PYTEST_ARGS)

# A real 3-node Docker Swarm in network namespaces and a registry (tests/support/cluster.py,
# needs root). `make test` runs its smoke size (SHIPWAY_CLUSTER_SCALE=smoke, the default: no
# node-loss tests); SHIPWAY_CLUSTER_TESTS=0 skips it.
test-cluster: provision
	SHIPWAY_CLUSTER_SCALE=full $(BIN)/pytest -q -p no:cacheprovider -m cluster tests/cluster $(PYTEST_ARGS)

demo: provision
	@bash scripts/demo.sh

BENCH_ARGS ?=
bench: provision
	$(BIN)/python -m bench $(BENCH_ARGS)

BENCH_OUTPUT ?= /tmp/shipway-bench-quick.md
bench-quick: provision
	$(BIN)/python -m bench --quick --output $(BENCH_OUTPUT)

bench-promote: provision
	$(BIN)/python -m bench.promote

clean:
	rm -rf .scratch .shipway .pytest_cache .mypy_cache .ruff_cache .hypothesis build
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf .venv *.egg-info src/*.egg-info
