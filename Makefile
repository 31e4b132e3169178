# agentops.fleet — developer and CI entry points. `make test` is the test command.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
IMAGE_DEBIAN12 ?= agentops-test/debian12:latest
IMAGE_DEBIAN13 ?= agentops-test/debian13:latest
SCENARIO ?=
# Every Molecule scenario (a folder with molecule.yml).
SCENARIOS := $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
COLLECTIONS := $(CURDIR)/.cache/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/agentops/fleet

export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup venv host images collection docs lint unit property molecule test test-matrix bench demo demo-clean clean

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: venv host images collection ## venv, Docker engine, debootstrap and the test images (idempotent)

venv: ## .venv from the pinned requirements.txt
	@PYTHON=$(PYTHON) scripts/setup-venv.sh $(VENV)

host: ## install docker.io + debootstrap when missing, start dockerd when not running
	@scripts/setup-host.sh

images: host ## build agentops-test/debian12 and debian13 from debootstrap (skipped when present)
	@scripts/build-image.sh bookworm $(IMAGE_DEBIAN12) & p1=$$!; \
	 scripts/build-image.sh trixie $(IMAGE_DEBIAN13) & p2=$$!; \
	 rc=0; wait $$p1 || rc=1; wait $$p2 || rc=1; exit $$rc

collection: ## make this checkout importable as agentops.fleet
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn $(CURDIR) $(COLLECTION_LINK)

docs: venv ## regenerate the role READMEs' tables (and shared agent options) from meta/argument_specs.yml
	@$(BIN)/python scripts/gen-docs.py

lint: venv collection ## ansible-lint (production), generated docs up to date, sanity, collection build + install
	@scripts/lint.sh

unit: venv collection ## unit tests of the modules, module_utils and the on-host command
	@PYTEST=$(BIN)/pytest scripts/pytest.sh -q tests/unit

property: venv collection images ## property test: accepted inventory values render units systemd reads as intended (one image)
	@PYTEST=$(BIN)/pytest scripts/pytest.sh -q tests/property

molecule: setup ## every Molecule scenario on both images (SCENARIO=name for one)
	@scripts/molecule.sh $(or $(SCENARIO),$(SCENARIOS))

test: setup lint unit property molecule ## THE test command: setup, lint, unit and property tests, all Molecule scenarios
	@echo "make test: all checks passed"

test-matrix: collection images ## sanity + unit tests per ansible-core release (2.19-2.21, own venvs), Molecule default under 2.19 and 2.21
	@scripts/test-matrix.sh

# The heartbeat CPU is compared with the last commit before one systemctl show / one journal read per run.
BENCH_HEARTBEAT_BEFORE ?= c39a6f7

bench: setup collection ## converge time for 1/50/200 agents and 1/2/4 hosts; heartbeat CPU for 1/50/200 agents, before and after
	@$(BIN)/python bench/converge_bench.py --agents 1,50,200 --hosts 1 --repeat 2
	@$(BIN)/python bench/converge_bench.py --agents 1 --hosts 1,2,4
	@$(BIN)/python bench/heartbeat_bench.py --agents 1,50,200 --ref $(BENCH_HEARTBEAT_BEFORE) --ref worktree

demo: setup collection ## a two-host demo fleet in containers, and the failures it catches
	@$(BIN)/python scripts/demo.py

demo-clean: ## remove the demo containers
	@ids=$$(docker ps -aq --filter label=agentops-demo=1); \
	 if [ -n "$$ids" ]; then docker rm -f $$ids >/dev/null; echo "demo containers removed"; else echo "no demo containers"; fi

clean: ## remove the venv, caches and built tarballs (keeps the images)
	rm -rf $(VENV) .cache .pytest_cache tests/output agentops-fleet-*.tar.gz
