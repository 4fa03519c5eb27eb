# The two commands: `make up` brings the whole service up, `make test` runs the tests.
# Both create the virtual environment on first use. With DATABASE_URL and REDIS_URL
# unset (in the environment and in .env) they start an embedded PostgreSQL and Redis
# under .data/; `make up` records their URLs in .env, which the settings, the Flask
# CLI and honcho read, so commands in another shell find the same servers.

VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install up test test-all lint bench bench-full chaos stop-services clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Migrate (the Procfile's release step), then run web, worker and scheduler. Without
# SLA_ADMIN_TOKEN (environment or .env) a local one is generated and kept in .env, so the
# admin routes and the Dramatiq dashboard exist; once the API answers, the links to the
# API, /docs, /dramatiq/ and /ui/ are printed, with the token.
# The roles' metrics share a multiprocess directory, emptied first (docs/metrics.md).
# Human-readable log lines unless SLA_LOG_FORMAT says otherwise (docs/logging.md).
up: install
	@eval "$$($(BIN)/python -m devtools.services env)" && \
	eval "$$($(BIN)/python -m devtools.services admin-token)" && \
	$(BIN)/python -m devtools.services wait && \
	$(BIN)/alembic upgrade head && \
	echo "API on http://127.0.0.1:$${PORT:-8000}  (DATABASE_URL=$$DATABASE_URL REDIS_URL=$$REDIS_URL)" && \
	{ PORT=$${PORT:-8000} $(BIN)/python -m devtools.services links & } && \
	export PROMETHEUS_MULTIPROC_DIR="$${PROMETHEUS_MULTIPROC_DIR:-$(CURDIR)/.data/metrics}" && \
	mkdir -p "$$PROMETHEUS_MULTIPROC_DIR" && rm -f "$$PROMETHEUS_MULTIPROC_DIR"/*.db && \
	SLA_LOG_FORMAT=$${SLA_LOG_FORMAT:-console} $(BIN)/honcho start --port $${PORT:-8000} web worker scheduler

# Unit, integration and acceptance tests (tens of seconds). `make test-all` adds the slow tier.
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

test-all: install
	$(BIN)/pytest --slow $(PYTEST_ARGS)

# Benchmarks (docs/performance.md): a quick profile (minutes) or the full sizes. They use
# a dedicated database `bench` beside DATABASE_URL's and write bench/results/<profile>.json.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@eval "$$($(BIN)/python -m devtools.services env)" && $(BIN)/python -m bench --profile quick $(BENCH_ARGS)

bench-full: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@eval "$$($(BIN)/python -m devtools.services env)" && $(BIN)/python -m bench --profile full $(BENCH_ARGS)

# Chaos (docs/reliability.md): 50,000 timers through worker kills, a Redis FLUSHALL and
# pause and a PostgreSQL restart, on a dedicated embedded PostgreSQL and Redis (minutes).
# Writes bench/results/chaos.json and the chaos section of docs/reliability.md.
chaos: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

stop-services:
	$(BIN)/python -m devtools.services stop

# .data/, and the embedded PostgreSQL's copy outside the checkout if it needed one
# (root in a directory nobody can enter: devtools/services.py).
clean: stop-services
	rm -rf .data "$$($(BIN)/python -c 'from devtools.services import runtime_dir; print(runtime_dir())')"
