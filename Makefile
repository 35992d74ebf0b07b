# Two commands on a fresh machine: `make tables` and `make test`.
# Both create .venv and install the project once (a second call reinstalls nothing).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv test test-paper-smoke test-faults tables figures bench gpu-check lint clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m svitt.models.cpu_kernel
	touch $(STAMP)

venv: $(STAMP)

# `snakemake --lint` first (a few seconds): the DAG's rules keep their log:, conda: and inputs.
test: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/python -m pytest -q -m "not cluster and not paper_smoke"

# The paper profile at its real shapes (BEiT-B/16 at 224 px, BERT-base, G = 56) with random
# weights written by the test: two optimizer steps per stage, the DAG behind Tables A1, A3
# and A8 (tests/test_paper_smoke.py, docs/workflow.md); about 10 minutes on 2 cores.
test-paper-smoke: $(STAMP)
	$(BIN)/python -m pytest -q -m paper_smoke --durations=1

# Fault tolerance and the live SLURM cluster: four runs of the CI-sized DAG up to Table A8
# (SVITT_FAULTS_TARGET=tables: the whole DAG each time); the SLURM test needs root.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m cluster

tables: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) tables

figures: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) figures

bench: $(STAMP)
	$(BIN)/python -m benchmarks.attention
	$(BIN)/python -m benchmarks.model
	$(BIN)/python -m benchmarks.loader

# On a machine with a CUDA GPU: tests/test_cuda.py, then both benchmarks in bf16 (`_cuda` tables).
gpu-check: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh results/gpu_check

lint: $(STAMP)
	$(BIN)/ruff check svitt tests benchmarks
	$(BIN)/ruff format --check svitt tests benchmarks
