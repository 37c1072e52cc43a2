# atp: two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install lock upgrade lock-check system-deps run test test-fast lint bench bench-small clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

system-deps: ## Install redis-server (Debian package) when it is not on PATH
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server (Debian package)"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; \
	    ( $(SUDO) service redis-server stop || $(SUDO) systemctl stop redis-server || true ) >/dev/null 2>&1; \
	  else \
	    echo "redis-server is required: install Redis 7 (e.g. 'brew install redis') and retry" >&2; exit 1; \
	  fi; \
	fi

# Dependencies come from uv.lock only (runtime, `local`, `dev` and `bench` sets, with hashes).
# uv itself is pinned and bootstrapped into a tool venv of its own, so nothing is installed by
# hand; `make lock` is the one way the lock changes.
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "uv==$(UV_VERSION)"

lock-check: $(UV) ## Fail when uv.lock does not match pyproject.toml
	@out=$$($(UV) lock --check --python $(PYTHON) 2>&1) || { echo "$$out" >&2; \
	  echo "uv.lock does not match pyproject.toml (uv's words above): run 'make lock' and commit uv.lock" >&2; \
	  exit 1; }

$(STAMP): pyproject.toml uv.lock | $(UV)
	@$(MAKE) --no-print-directory lock-check
	$(UV) sync --locked --python $(PYTHON) --extra dev --extra bench
	@touch $(STAMP)

install: system-deps $(STAMP) ## Create .venv with exactly the locked dependencies (runtime, local, dev, bench)

lock: $(UV) ## Update uv.lock after a change to pyproject.toml (keeps every other pin)
	$(UV) lock --python $(PYTHON)

upgrade: $(UV) ## Upgrade every locked package (a commit of its own, after the suite ran on it)
	$(UV) lock --upgrade --python $(PYTHON)

run: install ## The whole stack locally with a demo feed (atp dev)
	$(BIN)/atp dev

lint: install ## ruff (lint and format), mypy (strict), the import layers
	$(BIN)/ruff check atp_service streams allocation benchmarks tests
	$(BIN)/ruff format --check atp_service streams allocation benchmarks tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install lint ## Lint, then the whole suite (unit, property, integration, faults)
	$(BIN)/python -m pytest -p no:cacheprovider

test-fast: install ## Unit and property tests only: no services, fewer hypothesis examples
	HYPOTHESIS_PROFILE=dev $(BIN)/python -m pytest -p no:cacheprovider tests/unit tests/property

bench-small: install ## Every benchmark at a small size
	$(BIN)/python -m benchmarks --size small

bench: install ## Every benchmark, small and full size
	$(BIN)/python -m benchmarks --size small
	$(BIN)/python -m benchmarks --size full

clean: ## Remove the venv and run state
	rm -rf $(VENV) $(TOOLS) .run var
