# One entry point per task. Every target sets itself up first (`make install` is idempotent).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# CPU wheel by default; on a GPU machine: make install TORCH_SPEC="torch==2.13.0" with a CUDA index (README).
TORCH_SPEC ?= torch==2.13.0
export DS_ACCELERATOR ?= cpu
export RAY_USAGE_STATS_ENABLED = 0
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false
export DS_BUILD_OPS = 0

.PHONY: install test test-slow test-all demo plan bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt "$(TORCH_SPEC)"
	# DeepSpeed's setup imports torch: build it against the torch just installed, not a fresh
	# (CUDA, multi-GB) torch in an isolated build env.
	$(BIN)/pip install -q -c constraints.txt --no-build-isolation deepspeed
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-slow: install
	$(BIN)/python -m pytest -m "slow and not gpu" -q

test-all: install
	$(BIN)/python -m pytest -m "not gpu" -q

# The fits may report budgets whose iso-FLOP curve has no trustworthy minimum (error lines, exit 1):
# that is a finding about the runs, not a failure of the demo, so make carries on to the figures.
# Exit 2 (bad input, an unwritable folder) still stops it. --at 1e12 answers the study's question
# 5x beyond the demo's largest budget.
demo: install
	$(BIN)/scaling run sweeps/demo.yaml
	$(BIN)/scaling fit outputs/demo --at 1e12 || [ $$? -eq 1 ]
	$(BIN)/scaling plot outputs/demo || [ $$? -eq 1 ]
	@echo "results: outputs/demo/results.parquet  fits: outputs/demo/fits/  figures: outputs/demo/figures/"
	@echo "next: $(BIN)/scaling pareto sweeps/demo.yaml   (samplers' speed/quality frontier, ~2 min)"

plan: install
	$(BIN)/scaling plan sweeps/paper.yaml

bench: install
	$(BIN)/python benchmarks/fit_speed.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/sampling_speed.py
	$(BIN)/python benchmarks/sweep_efficiency.py

clean:
	rm -rf $(VENV) .pytest_cache outputs
