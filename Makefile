# mullvad-allow-k8s: one entry point for running, testing and packaging.
# Packaging areas add their targets in mk/*.mk (deb.mk, rpm.mk, nix.mk, ...).
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: all deps deps-core venv run test unit kernel netlab lint bench mutation packaging-bench clean \
	clean-test-cache help
all: lint test

help:
	@echo "make run      generate and check the ruleset for this machine (defaults)"
	@echo "make test     run every test suite (kernel/netlab suites need root)"
	@echo "make lint     ruff + mypy --strict"
	@echo "make bench    print performance figures (the lab part needs root)"
	@echo "make mutation  every rule of the table deleted/weakened in turn, against the lab (root)"
	@echo "make packaging-bench  package, publish, root and image build times (minutes)"
	@echo "suites:       make unit | kernel | netlab | deb-test | rpm-test | nix-test |"
	@echo "              install-test | repo-test"
	@echo "packages:     make deb | rpm | repo (signed apt + dnf repositories) | images"
	@echo "nix:          make nix-parse | nix-build | nix-vm (the last two need nixpkgs)"

# Debian packages (from .ci/apt/*.txt); a no-op when all are installed.
deps-core:
	@scripts/install-deps.sh .ci/apt/core.txt

deps: deps-core
	@scripts/install-deps.sh

# --system-site-packages: the nftables bindings exist only as Debian's python3-nftables.
$(BIN)/mullvad-allow-k8s: pyproject.toml Makefile
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q -e . ruff mypy pytest pytest-xdist hypothesis pytest-container
	touch $@

venv: deps-core $(BIN)/mullvad-allow-k8s

run: venv
	$(BIN)/mullvad-allow-k8s generate --check

test: deps venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

kernel: venv
	$(BIN)/python -m pytest tests/kernel $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

bench: venv
	$(BIN)/python bench/generate_bench.py
	@if [ "$$(id -u)" = 0 ]; then \
		$(BIN)/python bench/rules_per_packet.py && $(BIN)/python bench/netlab_bench.py; \
	else echo "bench/rules_per_packet.py, bench/netlab_bench.py skipped: need root (network namespaces)"; fi

# Each rule of the generated table deleted (and the issue's weakenings) in turn, the lab's
# probes run against each mutant; exits 1 if any survives (about 3 minutes, root).
# tests/netlab/test_mutation.py runs the same sweep in `make test`.
# MUTATION_ARGS=--suites: then the survivors against the netlab suites (~25 s each).
MUTATION_ARGS ?=
mutation: venv
	$(BIN)/python bench/mutation.py $(MUTATION_ARGS)

# Minutes, and downloads the Debian suites: not part of `make bench`.
packaging-bench: deps venv
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python bench/packaging_bench.py --roots --images; \
	else $(BIN)/python bench/packaging_bench.py; fi

netlab: venv
	$(BIN)/python -m pytest tests/netlab $(PYTEST_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The test suites' cache of Debian roots, Python layers and stubs (tests/roots.py).
clean-test-cache:
	rm -rf "$${MAK_TEST_CACHE:-/var/tmp/mullvad-allow-k8s-tests}"

-include mk/*.mk
