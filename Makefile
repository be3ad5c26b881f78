# Two commands on a fresh machine: `make run` (set-up + quickstart) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEFAULT_MODEL := models/smollm2-135m-instruct/config.json
# The default path never downloads weights or data sets.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

# llama-cpp-python compiles llama.cpp here. Native (this CPU's AVX2/AVX-512/VNNI kernels), but with Intel
# AMX off: ggml's AMX kernels crash on virtualised Sapphire/Granite Rapids CPUs (llama.cpp #20824), which
# is where cloud CPU servers run. `make llama-cpp LLAMA_AMX=1` keeps them; `workbench doctor` tells
# whether they work. `make llama-cpp LLAMA_CMAKE_ARGS=-DGGML_NATIVE=OFF` builds for any AVX2 CPU.
# (The flags exist on x86-64 only; elsewhere the build is plain native.)
AMX_OFF := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
X86 := $(filter x86_64 amd64,$(shell uname -m))
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON$(if $(LLAMA_AMX)$(if $(X86),,no),, -DCMAKE_C_FLAGS='$(AMX_OFF)' -DCMAKE_CXX_FLAGS='$(AMX_OFF)')

.PHONY: install model doctor run test test-fast lint fmt typecheck docs snapshots lock clean llama-cpp

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -c requirements.lock -e '.[stack,dev]'
	$(BIN)/python -m workbench.doctor.build "$(LLAMA_CMAKE_ARGS)" || $(MAKE) llama-cpp
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/workbench setup
	touch $(STAMP)

# Rebuild llama-cpp-python with LLAMA_CMAKE_ARGS (pip's wheel cache would hand back the earlier build).
llama-cpp:
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --no-cache-dir --force-reinstall --no-deps \
		-c requirements.lock llama-cpp-python
	$(BIN)/python -m workbench.doctor.build "$(LLAMA_CMAKE_ARGS)"

model: $(DEFAULT_MODEL)

$(DEFAULT_MODEL): | $(STAMP)
	$(OFFLINE) $(BIN)/workbench models pull smollm2-135m-instruct

# Each backend the quickstart needs does a tiny piece of work in its own process; stops with advice if one cannot.
doctor: install
	$(OFFLINE) $(BIN)/workbench doctor --for recipes/quickstart.yaml

run: install model doctor
	$(OFFLINE) $(BIN)/workbench run recipes/quickstart.yaml
	$(BIN)/workbench report quickstart

CODE := workbench tests benchmarks recipes

lint: install
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: install
	$(BIN)/mypy

# the docs site (docs/, mkdocs.yml) into site/; --strict fails on a dead link or a page missing from the nav
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# the whole suite, as CI runs it
test: lint typecheck docs
	$(OFFLINE) $(BIN)/python -m pytest -q --durations=15

# the inner loop: everything but the end-to-end runs (marked slow), stopping at the first failure
test-fast: install
	$(OFFLINE) $(BIN)/python -m pytest -q -x -m "not slow"

fmt: install
	$(BIN)/ruff check --fix $(CODE)
	$(BIN)/ruff format $(CODE)

# after a deliberate change to a screen's layout: look at the SVG diff, then accept it
snapshots: install
	$(OFFLINE) $(BIN)/python -m pytest -q tests/test_tui_snapshots.py --snapshot-update

# Re-resolve and pin every dependency (run after changing pyproject.toml).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf runs site .pytest_cache .ruff_cache
