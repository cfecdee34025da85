# shipway: day-to-day commands. `make test` works from a fresh clone (it provisions first).
SHELL := /bin/bash
.DEFAULT_GOAL := help

BIN := .venv/bin
PYTEST_ARGS ?=

.PHONY: help provision images lint format test test-busy test-chaos test-fuzz test-cluster test-topology demo bench bench-quick bench-promote bench-cluster clean distclean

help:
	@echo "make provision  install system packages, .venv, Docker engine and base image (idempotent)"
	@echo "make images     build shipway's container images offline (Debian base by debootstrap)"
	@echo "make lint       ruff check, ruff format --check, mypy"
	@echo "make format     apply ruff's fixes and formatting"
	@echo "make test       provision, lint, then the whole test suite (PYTEST_ARGS=... to narrow)"
	@echo "make test-busy  provision, then the suite RUNS=3 times in a row beside HOGS=2 CPU-bound"
	@echo "                processes (stress-ng); stops at the first failure"
	@echo "make test-chaos provision, then the full chaos suite (tests/chaos; restarts dockerd!)"
	@echo "make test-fuzz  provision, then a long API fuzz run (SHIPWAY_FUZZ_EXAMPLES=200 per operation)"
	@echo "make test-cluster  provision, then the multi-node suite: a 3-node Docker Swarm + registry (root)"
	@echo "make test-topology  provision, images, then docker-compose.yml and deploy/stack.yml brought up"
	@echo "                and exercised for real (publish, promote, public URL, rollback)"
	@echo "make demo       provision, then a guided tour of the API against 'shipway up'"
	@echo "make bench      every benchmark against its raw baseline (writes bench/RESULTS.md)"
	@echo "make bench-quick  the same, small sizes (a smoke run; BENCH_OUTPUT=... to keep it)"
	@echo "make bench-cluster  swarm benchmarks on a 3-node cluster + registry (root; its section of bench/RESULTS.md)"
	@echo "make clean      remove scratch data and caches (keeps .venv)"
	@echo "make distclean  clean, and remove .venv"

provision:
	@bash scripts/provision.sh

# shipway:local, shipway/support:local and their base shipway/debian:bookworm, without any
# image registry (scripts/images.sh; minutes the first time, seconds when nothing changed).
images:
	@bash scripts/images.sh

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

# The suite on a busy machine (issue 18): RUNS runs in a row, HOGS CPU-bound processes beside.
test-busy: provision
	@RUNS=$${RUNS:-3} HOGS=$${HOGS:-2} PYTEST_ARGS="$(PYTEST_ARGS)" bash scripts/test-busy.sh

# The full-size chaos suite (docs/chaos.md). `make test` runs tests/chaos too, in smoke size.
# Then the e2e cases make test leaves out (marked long: tests/support/variants.py).
# SHIPWAY_CHAOS_DOCKER=1 restarts the Docker engine: every container on it is stopped.
test-chaos: provision
	SHIPWAY_CHAOS_SCALE=full SHIPWAY_CHAOS_DOCKER=$${SHIPWAY_CHAOS_DOCKER:-1} \
		$(BIN)/pytest -q -p no:cacheprovider tests/chaos $(PYTEST_ARGS)
	SHIPWAY_CHAOS_SCALE=full $(BIN)/pytest -q -p no:cacheprovider -m long tests/e2e $(PYTEST_ARGS)

# `make test` fuzzes every API operation with 25 fixed examples; this explores 200 new ones.
test-fuzz: provision
	SHIPWAY_FUZZ_EXAMPLES=$${SHIPWAY_FUZZ_EXAMPLES:-200} \
		$(BIN)/pytest -q -p no:cacheprovider tests/test_fuzz_api.py $(PYTEST_ARGS)

# A real 3-node Docker Swarm in network namespaces and a registry (tests/support/cluster.py,
# needs root). `make test` runs its smoke size (SHIPWAY_CLUSTER_SCALE=smoke, the default: no
# node-loss tests); SHIPWAY_CLUSTER_TESTS=0 skips it.
test-cluster: provision
	SHIPWAY_CLUSTER_SCALE=full $(BIN)/pytest -q -p no:cacheprovider -m cluster tests/cluster $(PYTEST_ARGS)

# The production topologies brought up for real (tests/topology): docker-compose.yml on this
# engine, deploy/stack.yml on the cluster harness. `make test` skips them (and says so).
test-topology: provision images
	SHIPWAY_TOPOLOGY_TESTS=1 $(BIN)/pytest -q -p no:cacheprovider -m topology tests/topology $(PYTEST_ARGS)

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

# Publish, promote and node loss on the project's 3-node swarm (tests/support/cluster.py,
# needs root; waits for the machine's cluster lock), beside raw Swarm. Writes the swarm
# section of bench/RESULTS.md; BENCH_CLUSTER_ARGS=--quick prints a short run, writes nothing.
BENCH_CLUSTER_ARGS ?= --write
bench-cluster: provision
	$(BIN)/python -m bench.swarm $(BENCH_CLUSTER_ARGS)

clean:
	rm -rf .scratch .shipway .pytest_cache .mypy_cache .ruff_cache .hypothesis build
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf .venv *.egg-info src/*.egg-info
