# Two commands on a fresh machine: `make run` (set-up + quickstart) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEFAULT_MODEL := models/smollm2-135m-instruct/config.json
# The default path never downloads weights or data sets.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: install model run test lint lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -c requirements.lock -e '.[stack,dev]'
	$(BIN)/workbench setup
	touch $(STAMP)

model: $(DEFAULT_MODEL)

$(DEFAULT_MODEL): | $(STAMP)
	$(OFFLINE) $(BIN)/workbench models pull smollm2-135m-instruct

run: install model
	$(OFFLINE) $(BIN)/workbench run recipes/quickstart.yaml
	$(BIN)/workbench report quickstart

lint: install
	$(BIN)/ruff check workbench tests bench recipes

test: lint
	$(OFFLINE) $(BIN)/python -m pytest -q

# Re-resolve and pin every dependency (run after changing pyproject.toml).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf runs .pytest_cache .ruff_cache
