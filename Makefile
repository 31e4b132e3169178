# agentops.fleet — developer and CI entry points. `make test` is the test command.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
IMAGE_DEBIAN12 ?= agentops-test/debian12:latest
IMAGE_DEBIAN13 ?= agentops-test/debian13:latest
IMAGE_DEBIAN11 ?= agentops-test/debian11:latest
IMAGE_DEBIAN_TESTING ?= agentops-test/debian-testing:latest
SCENARIO ?=
# Every Molecule scenario (a folder with molecule.yml).
SCENARIOS := $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
COLLECTIONS := $(CURDIR)/.cache/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/agentops/fleet

export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup venv host images images-all test-all collection docs lint unit property molecule test test-matrix bench demo demo-clean clean

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: venv host images collection ## venv, Docker engine, debootstrap and the test images (idempotent)

venv: ## .venv from the pinned requirements.txt
	@PYTHON=$(PYTHON) scripts/setup-venv.sh $(VENV)

host: ## install docker.io + debootstrap when missing, start dockerd when not running
	@scripts/setup-host.sh

images: host ## build agentops-test/debian12, debian13 and debian11 from debootstrap, in parallel (skipped when present)
	@scripts/build-image.sh bookworm $(IMAGE_DEBIAN12) & p1=$$!; \
	 scripts/build-image.sh trixie $(IMAGE_DEBIAN13) & p2=$$!; \
	 scripts/build-image.sh bullseye $(IMAGE_DEBIAN11) & p3=$$!; \
	 rc=0; wait $$p1 || rc=1; wait $$p2 || rc=1; wait $$p3 || rc=1; exit $$rc

images-all: images ## the images of `make images` and agentops-test/debian-testing (debootstrap's sid script)
	@scripts/build-image.sh testing $(IMAGE_DEBIAN_TESTING) sid

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

# The images build (debootstrap: mostly download and unpack) while lint and the unit tests run;
# neither needs them. Its log: .cache/logs/images.log.
test: venv host collection ## THE test command: setup, lint, unit and property tests, all Molecule scenarios
	@mkdir -p .cache/logs; \
	 $(MAKE) --no-print-directory images >.cache/logs/images.log 2>&1 & images=$$!; \
	 rc=0; $(MAKE) --no-print-directory lint unit || rc=$$?; \
	 if ! wait $$images; then cat .cache/logs/images.log; echo "make test: building the images failed" >&2; exit 1; fi; \
	 cat .cache/logs/images.log; exit $$rc
	@$(MAKE) --no-print-directory property molecule
	@echo "make test: all checks passed"

test-all: venv host collection images-all ## every scenario on Debian 11, 12, 13, then on Debian testing (non-gating; slow)
	@AGENTOPS_MOLECULE_BASE_CONFIG=.config/molecule/config.yml:.config/molecule/all.yml \
	 scripts/molecule.sh $(or $(SCENARIO),$(SCENARIOS))
	@AGENTOPS_MOLECULE_BASE_CONFIG=.config/molecule/config.yml:.config/molecule/testing.yml \
	 AGENTOPS_MOLECULE_SKIP_OWN_PLATFORMS=1 scripts/molecule.sh $(or $(SCENARIO),$(SCENARIOS)) \
	 || echo "make test-all: the Debian testing pass failed (non-gating)" >&2
	@echo "make test-all: every scenario passed on Debian 11, 12 and 13"

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
