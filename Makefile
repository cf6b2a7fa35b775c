# edgeqwen: `make run` sets everything up and runs the model; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?= models/qwen3-0.6b-synth
PROMPT ?= Give me a short introduction to large language models.

.PHONY: setup run test bench golden clean

$(BIN)/edgeqwen: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

setup: $(BIN)/edgeqwen

$(MODEL)/config.json: | $(BIN)/edgeqwen
	$(BIN)/edgeqwen synth --preset qwen3-0.6b --dtype bf16 $(MODEL)

run: $(BIN)/edgeqwen $(MODEL)/config.json
	$(BIN)/edgeqwen generate -m $(MODEL) "$(PROMPT)" --max-tokens 64

test: $(BIN)/edgeqwen
	$(BIN)/python -m pytest tests

bench: $(BIN)/edgeqwen $(MODEL)/config.json
	$(BIN)/python tools/bench_core.py -m $(MODEL)

# regenerate tests/fixtures/golden with the reference implementation (torch + transformers)
golden: $(BIN)/edgeqwen
	$(BIN)/pip install --quiet -e ".[reference]"
	$(BIN)/python tools/make_golden.py

clean:
	rm -rf $(VENV) models
