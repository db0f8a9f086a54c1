# flashsale: every entry point. `make demo` and `make test` install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup services test test-fast test-slowpath lint typecheck bench demo clean

setup: $(STAMP)
	scripts/ensure-services.sh redis

# the virtualenv alone: all that test-fast needs
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

services: setup
	scripts/ensure-services.sh redis postgres chromium promtool

test: services
	$(BIN)/pytest -q

# no Redis, PostgreSQL, browser or promtool: pure-Python tests only (tests/conftest.py marks the rest)
test-fast: $(STAMP)
	FLASHSALE_TEST_TIER=fast $(BIN)/pytest -q -m "not needs_services"

# the API and ops tests again with the fast path off (engine/fastpath.py): the documented path
# every untested uvicorn or prometheus-client release falls back to must answer alike
test-slowpath: services
	FLASHSALE_FAST_PATH=0 $(BIN)/pytest -q -m "not browser" tests/api tests/ops

lint: setup
	$(BIN)/ruff check engine tests scripts loadtests

typecheck: setup
	$(BIN)/mypy

bench: services
	scripts/ensure-services.sh wrk
	$(BIN)/python -m scripts.bench.all

demo: setup
	$(BIN)/flashsale demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
