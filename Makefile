# The two commands a fresh clone needs: `make run` and `make test`.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install run test soak bench lint format clean

$(STAMP): core/pyproject.toml requirements-dev.txt $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements-dev.txt -e core $(foreach p,$(PLUGINS),-e $(dir $(p)))
	$(BIN)/python tools/install_helm.py  # helm + kubectl into .venv/bin (tests/deploy/test_helm.py)
	touch $(STAMP)

install: $(STAMP)

## Run the collector on its embedded default: HTTP CloudEvents on 127.0.0.1:8080,
## durable queue in ./data, debug exporter (or OpenMeter when OPENMETER_URL is set).
run: $(STAMP)
	$(BIN)/collector run

## The whole test suite (soak and benchmarks excluded).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not soak" -q

## The long soak (COLLECTOR_SOAK_TRIALS, default 200): the oracle's worker crash loop (kill -9 during
## ingest, restart), then disk-full and queue-corruption injection (COLLECTOR_SOAK_TRIALS / 20 cycles each;
## tests/reliability/test_soak_faults.py). Replay a run with COLLECTOR_ORACLE_SEED.
soak: $(STAMP)
	COLLECTOR_SOAK_TRIALS=$${COLLECTOR_SOAK_TRIALS:-200} $(BIN)/python -m pytest -m soak -q -s tests/reliability

## Benchmarks: the collector beside baselines measured in the same run.
bench: $(STAMP)
	$(BIN)/python tests/bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check core plugins tests
	$(BIN)/ruff format --check core plugins tests
	$(BIN)/mypy core/src $(wildcard plugins/*/src)
	$(BIN)/lint-imports --config pyproject.toml
	$(BIN)/hadolint contrib/docker/Dockerfile  # the container image (contrib/docker/README.md)

format: $(STAMP)
	$(BIN)/ruff format core plugins tests
	$(BIN)/ruff check --fix core plugins tests

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .mypy_cache
