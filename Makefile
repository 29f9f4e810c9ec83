# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TOOLS_STAMP := $(VENV)/.tools-stamp
PYTEST_ARGS ?=

.PHONY: install serve test fuzz bench load load-faults lint clean lock lock-upgrade lock-check

# pip and uv themselves, pinned with hashes (requirements/tools.txt).
$(TOOLS_STAMP): requirements/tools.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/tools.txt
	touch $(TOOLS_STAMP)

# Every third-party package from the hashed lock, then the repository's three distributions on top
# with nothing more resolved (docs/operations.md "Dependencies"): secagg/ (the secure-aggregation
# protocol, which the server needs at runtime), privacy_client/ (the SDK, which the server's tests
# need) and the server itself.
$(STAMP): $(TOOLS_STAMP) pyproject.toml secagg/pyproject.toml privacy_client/pyproject.toml requirements/lock.txt
	$(PY) -m pip install --quiet --require-hashes -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e ./secagg -e ./privacy_client -e .
	touch $(STAMP)

install: $(STAMP)

## Re-lock after editing pyproject.toml's ranges (keeps every pin still allowed); commit both.
lock: $(TOOLS_STAMP)
	UV=$(abspath $(VENV))/bin/uv requirements/lock.sh

## Move every pin to the newest release pyproject.toml allows.
lock-upgrade: $(TOOLS_STAMP)
	UV=$(abspath $(VENV))/bin/uv requirements/lock.sh --upgrade

## Fail unless the committed lock files are exactly what re-locking gives (CI runs it).
lock-check: $(TOOLS_STAMP)
	UV=$(abspath $(VENV))/bin/uv requirements/lock.sh --check

## Run the service on SQLite with demo data; prints an admin API key.
serve: $(STAMP)
	$(VENV)/bin/privacy-api serve

## The whole test suite (SQLite always; PostgreSQL when PRIVACY_API_TEST_POSTGRES_URL is set).
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -m "not exclusive" $(PYTEST_ARGS)
	$(PY) -m pytest -m exclusive $(PYTEST_ARGS)

## Only the Schemathesis run (/openapi.json, every check, 500 cases per operation; ~3 min).
fuzz: $(STAMP)
	PRIVACY_API_FUZZ_EXAMPLES=500 $(PY) -m pytest -n 2 tests/hardening/test_fuzz.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench

## Issue 6 load run: 2 instances x 2 workers on PostgreSQL, 50 analysts x 1,000 requests.
load: $(STAMP)
	$(PY) -m bench.bench_load

## The same under faults: workers SIGKILLed and PostgreSQL restarted while it runs (root).
load-faults: $(STAMP)
	$(PY) -m bench.bench_load --faults

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy mechanisms secagg/src/privacy_secagg privacy_client/src/privacy_client privacy_api

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache test-output
