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
APT_PACKAGES := mosquitto mosquitto-clients postgresql chromium tesseract-ocr nginx-light
PYTEST_ARGS ?=
export SCANEMON_SHARED_DATA := $(SHARED_DATA)

.PHONY: help setup system-deps demo test test-fast reliability bench bench-report bench-ingest bench-faiss bench-collection \
        bench-resolver bench-device bench-accuracy bench-final \
        eval eval-final eval-negatives resolver-calibration models catalog serve clean

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

# Every benchmark records its figures with the command and the machine (tests/bench/results.py); the report
# turns them into one table. A failing benchmark is reported as missing, the others still run.
BENCH := $(BIN)/python -m tests.bench.results run
RAW := var/reports/bench/raw
BENCHES := bench-device bench-accuracy bench-final bench-resolver bench-faiss bench-ingest bench-collection

bench: setup ## every benchmark, then one report: var/reports/bench/REPORT.md + report.json (copied to docs/bench)
	@for t in $(BENCHES); do $(MAKE) --no-print-directory $$t || echo "bench: $$t FAILED (left out of the report)"; done
	$(BIN)/python -m tests.bench.report --copy-to docs/bench

bench-report: setup ## rebuild the report from the recorded runs
	$(BIN)/python -m tests.bench.report --copy-to docs/bench

bench-ingest: setup
	$(BENCH) ingest --json $(RAW)/ingest.json --target "make bench-ingest" -- \
	  $(BIN)/python -m tests.bench.bench_ingest --devices 4 --rate 800 --seconds 10 --workers 2 --batch-max 100 --json-out $(RAW)/ingest.json

bench-faiss: setup
	$(BENCH) faiss --json $(RAW)/faiss.json --target "make bench-faiss" -- \
	  $(BIN)/python tests/bench/bench_faiss.py --json-out $(RAW)/faiss.json

var/catalog/index.jsonl: | setup  # every printing rendered (real sv1 scans where they exist), ~3 min
	$(BIN)/python -m models.synth catalog --pokemon-tcg-data $(PTCG) --images $(SV1_IMAGES) --out var/catalog

bench-resolver: setup var/catalog/index.jsonl
	$(BENCH) resolver --json $(RAW)/resolver.json --target "make bench-resolver" -- \
	  $(BIN)/python tests/bench/bench_resolver.py --catalog var/catalog --n 300 --no-ocr --json-out $(RAW)/resolver.json

bench-device: setup var/catalog/index.jsonl
	$(BENCH) device --json $(RAW)/device.json --target "make bench-device" -- \
	  $(BIN)/python tests/bench/bench_device.py --threads 1 --frames 200 --stacks 40 --out $(RAW)/device.json

bench-accuracy: setup var/catalog/index.jsonl ## device-only accuracy + detector IoU (simulated captures, real photos)
	$(BENCH) accuracy_device --json $(RAW)/accuracy_device.json --target "make bench-accuracy" -- \
	  $(BIN)/python -m models.vision_eval --bundle models/bundles/demo --n 500 --out $(RAW)/accuracy_device.json

bench-final: setup var/catalog/index.jsonl ## device + server final answer (smaller n than make eval-final)
	$(BENCH) final --json $(RAW)/final/metrics.json --target "make bench-final" -- \
	  $(BIN)/python -m models.eval.final --sets full_catalog_scanner_box,sv1_real_scans_scanner_box --n 1000 --n-sv1 300 \
	  --seed 900000 --out $(RAW)/final

bench-collection: setup
	$(BENCH) collection --json $(RAW)/collection.json --target "make bench-collection" -- \
	  $(BIN)/python tests/bench/bench_collection.py --json-out $(RAW)/collection.json

EVAL_ARGS ?= --identifier subprocess --cmd "$(BIN)/scanemon-device identify --bundle models/bundles/demo --json" --n 300 --seed 1
eval: setup ## evaluation report under var/reports/eval/REPORT.md
	$(BIN)/python -m models.eval $(EVAL_ARGS) --out var/reports/eval

EVAL_FINAL_ARGS ?= --sets full_catalog_scanner_box,sv1_real_scans_scanner_box --n 3000 --n-sv1 600 --seed 900000
eval-final: setup var/catalog/index.jsonl ## final answer (device + resolver), simulated captures -> var/reports/eval-final/REPORT.md
	nice -n 10 $(BIN)/python -m models.eval.final $(EVAL_FINAL_ARGS) --out var/reports/eval-final --docs-copy docs/eval/final.md

eval-negatives: setup var/catalog/index.jsonl ## non-catalog card-shaped objects in the scanner box: what device + resolver make of them
	nice -n 10 $(BIN)/python -m models.eval.negatives --n 200 --resolver

# The resolver's calibration from scratch (~15 min on 2 cores): the device's ambiguous scans of simulated
# scanner-box frames (seed 700000, far from the evaluations' 900000) fit the ranking; the negatives' scans
# (seed 940000; the evaluation's is 910000) join them to fit the none-of-these model with the ranking fixed.
CAL := var/calibration
$(CAL)/all.jsonl: | setup var/catalog/index.jsonl
	@mkdir -p $(CAL)
	$(BIN)/python -m tests.bench.resolver_scans collect --n 2000 --seed 700000 --subset all --out $@
$(CAL)/sv1.jsonl: | setup var/catalog/index.jsonl
	@mkdir -p $(CAL)
	$(BIN)/python -m tests.bench.resolver_scans collect --n 2000 --seed 700000 --subset sv1 --out $@
$(CAL)/negatives.jsonl: | setup var/catalog/index.jsonl
	@mkdir -p $(CAL)
	$(BIN)/python -m models.eval.negatives --n 400 --seed 940000 --resolver --scans-out $@ > $(CAL)/negatives.json

# Writes var/calibration/resolver_calibration.json; the server uses it with
# SCANEMON_RESOLVER__CALIBRATION=var/calibration/resolver_calibration.json (or copy it over the committed file).
resolver-calibration: $(CAL)/all.jsonl $(CAL)/sv1.jsonl $(CAL)/negatives.jsonl ## refit the resolver calibration from scratch -> var/calibration/
	$(BIN)/python -m tests.bench.resolver_scans fit --scans $(CAL)/all.jsonl,$(CAL)/sv1.jsonl --out $(CAL)/ranking.json
	$(BIN)/python -m tests.bench.resolver_scans fit --null-only --calibration $(CAL)/ranking.json \
	  --scans $(CAL)/all.jsonl,$(CAL)/sv1.jsonl,$(CAL)/negatives.jsonl --out $(CAL)/resolver_calibration.json

var/venv-export/bin/python:  # litert-torch pins typing-extensions<4.13, so the int8 exporter gets its own venv
	$(PYTHON) -m venv var/venv-export
	var/venv-export/bin/python -m pip install -q -e ".[export]"

models: setup var/venv-export/bin/python ## rebuild the device bundle from the catalog (trains; about an hour on 2 cores)
	$(BIN)/python -m models.build_bundle --pokemon-tcg-data $(PTCG) --images $(SV1_IMAGES)

clean:
	rm -rf var/ .pytest_cache build *.egg-info
