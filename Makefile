# atp: two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install system-deps run test test-fast lint bench bench-small clean

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

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

install: system-deps $(STAMP) ## Create .venv and install the project with its dev dependencies

run: install ## The whole stack locally with a demo feed (atp dev)
	$(BIN)/atp dev

lint: install ## ruff and mypy
	$(BIN)/ruff check atp_service streams allocation benchmarks tests
	$(BIN)/mypy

test: install lint ## Lint, then the whole suite (unit, property, integration, faults)
	$(BIN)/python -m pytest -p no:cacheprovider

test-fast: install ## Unit and property tests only
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit tests/property

bench-small: install ## Every benchmark at a small size
	$(BIN)/python -m benchmarks --size small

bench: install ## Every benchmark, small and full size
	$(BIN)/python -m benchmarks --size small
	$(BIN)/python -m benchmarks --size full

clean: ## Remove the venv and run state
	rm -rf $(VENV) .run var
