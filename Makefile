# Scanemon — two commands on a fresh Debian machine:
#   make demo   server + broker + simulated device scanning a stack of cards; open http://127.0.0.1:8000
#   make test   the whole test suite against real Mosquitto and PostgreSQL processes
#
# Everything else (venv, pinned pip installs, apt packages when root) is done on the way.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA ?= $(abspath ../shared/data)
PTCG := $(SHARED_DATA)/pokemon-tcg-data
SV1_IMAGES := $(SHARED_DATA)/PTCGextension/cards
EXTRAS ?= device,server,resolver,train,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt 2>/dev/null | sha1sum | cut -c1-12)
APT_PACKAGES := mosquitto mosquitto-clients postgresql chromium tesseract-ocr
PYTEST_ARGS ?=
export SCANEMON_SHARED_DATA := $(SHARED_DATA)

.PHONY: help setup system-deps demo test test-fast reliability bench bench-ingest bench-faiss bench-collection bench-resolver bench-device \
        eval models catalog serve clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

system-deps: ## apt packages (only when root and missing)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "apt-get install$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing >/dev/null \
	      || (apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing >/dev/null); \
	  else echo "warning: missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt pins every transitive version (and torch==2.14.1: pip never pulls an unpinned torch).
	$(BIN)/python -m pip install -q $(if $(wildcard constraints.txt),-c constraints.txt) -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*; touch $@

setup: system-deps $(STAMP) ## venv + pinned installs

test: setup ## full test suite (real Mosquitto + PostgreSQL started by the tests)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory reliability

test-fast: setup
	$(BIN)/python -m pytest -q -x -m "not slow" $(PYTEST_ARGS)

reliability: setup ## sync-path reliability suite; ends with scans=N lost=L duplicated=D dead_lettered=X
	$(BIN)/python -m tests.reliability.run

var/scanemon.db: | setup
	$(BIN)/scanemon-server --database-url sqlite:///var/scanemon.db catalog import --pokemon-tcg-data $(PTCG) --images $(SV1_IMAGES)

catalog: setup ## import the shared Pokémon catalog into the embedded database
	$(BIN)/scanemon-server --database-url sqlite:///var/scanemon.db catalog import --pokemon-tcg-data $(PTCG) --images $(SV1_IMAGES)

demo: setup ## one box: server + embedded broker + simulated device scanning a stack; http://127.0.0.1:8000
	$(BIN)/python -m server.demo --pokemon-tcg-data $(PTCG) --images $(SV1_IMAGES)

serve: setup
	$(BIN)/scanemon-server serve

bench: bench-ingest bench-faiss bench-collection bench-resolver bench-device ## all benchmarks

bench-ingest: setup
	$(BIN)/python -m tests.bench.bench_ingest --devices 4 --rate 800 --seconds 10 --workers 2 --batch-max 100

bench-faiss: setup
	$(BIN)/python tests/bench/bench_faiss.py

var/catalog/index.jsonl: | setup  # every printing rendered (real sv1 scans where they exist), ~3 min
	$(BIN)/python -m models.synth catalog --pokemon-tcg-data $(PTCG) --images $(SV1_IMAGES) --out var/catalog

bench-resolver: setup var/catalog/index.jsonl
	$(BIN)/python tests/bench/bench_resolver.py --catalog var/catalog --n 300 --no-ocr

bench-device: setup var/catalog/index.jsonl
	$(BIN)/python tests/bench/bench_device.py --threads 1 --frames 200 --stacks 10

bench-collection: setup
	$(BIN)/python tests/bench/bench_collection.py

EVAL_ARGS ?= --identifier subprocess --cmd "$(BIN)/scanemon-device identify --bundle models/bundles/demo --json" --n 300 --seed 1
eval: setup ## evaluation report under var/reports/eval/REPORT.md
	$(BIN)/python -m models.eval $(EVAL_ARGS) --out var/reports/eval

var/venv-export/bin/python:  # litert-torch pins typing-extensions<4.13, so the int8 exporter gets its own venv
	$(PYTHON) -m venv var/venv-export
	var/venv-export/bin/python -m pip install -q -e ".[export]"

models: setup var/venv-export/bin/python ## rebuild the device bundle from the catalog (trains; about an hour on 2 cores)
	$(BIN)/python -m models.build_bundle --pokemon-tcg-data $(PTCG) --images $(SV1_IMAGES)

clean:
	rm -rf var/ .pytest_cache build *.egg-info
