# smsgw — `make help` lists the targets. Every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run test test-faults test-fast lint format bench clean browser-deps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The dashboard's browser test needs Debian's chromium and its driver. Installing them takes
# root, so it is a step of its own (CI runs it before .ci/run); without them the test says so
# and is skipped.
browser-deps: ## install Debian's chromium and chromium-driver for the browser test (needs root)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

run: $(STAMP) ## start Redis, the provider simulator, the API and a worker locally; Ctrl-C stops all
	$(BIN)/smsgw run

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
	$$($(BIN)/python -c "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))") -f docker-compose.yml --profile dev config -q
	$(BIN)/python -m pytest -q tests/test_deploy.py tests/test_observability.py

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run the benchmarks (ratios against a baseline measured in the same run)
	$(BIN)/python -m bench

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis .run
