# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve
MUTANTS_STAMP := $(VENV)/.installed-mutants
SECRETS ?= ./secrets
export KMS_ENV ?= dev

.PHONY: run test lint format install openapi settings-doc newman wheelhouse clean help mutants mutants-report known-bugs bench

help:
	@echo "make run   - install, create dev certificates and passphrase, init data/dev.db, serve mTLS on :8080"
	@echo "make test  - install and run the whole test suite (TEST_WORKERS=4 processes)"
	@echo "make lint  - ruff check, format check and mypy (pyproject.toml, [tool.mypy])"
	@echo "make bench - requests/s, p50/p99 and ratios to a no-op (not in make test; docs/performance.md)"
	@echo "make mutants - mutation check of the API hooks, audit, server and service (tools/mutants; about 30 min on a quiet machine)"
	@echo "make openapi - write docs/openapi.json"
	@echo "make settings-doc - write docs/settings.md (every setting, from kms/settings.py)"
	@echo "make newman  - install newman from npm (deploy/postman), so make test runs the collection"
	@echo "make wheelhouse - kms and its dependencies as wheels in build/wheelhouse, for deploy/Dockerfile"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving needs only kms and its runtime dependencies; the test tools come with `make test`.
$(SERVE_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,postgres,hsm]'
	touch $(SERVE_STAMP) $(STAMP)

install: $(STAMP)

$(SECRETS)/master.key: | $(SERVE_STAMP)
	$(BIN)/kms dev-certs $(SECRETS)

# The port comes from the settings kms will serve with (KMS_SERVER_PORT=8099 make run included);
# gunicorn's master announces the address it really bound once it listens.
run: $(SERVE_STAMP) $(SECRETS)/master.key
	@$(BIN)/kms init --if-needed
	@port=$$($(BIN)/python -c 'from kms.settings import load_settings; print(load_settings().port)') && \
	echo "kms: starting on https://localhost:$$port (Ctrl-C stops). Try, in another terminal:" && \
	echo "  curl --cacert $(SECRETS)/ca.pem --cert $(SECRETS)/client.crt --key $(SECRETS)/client.key \\" && \
	echo "       -X POST https://localhost:$$port/v1/kms/keys -H 'Content-Type: application/json' -d '{\"key_id\":\"device123\"}'"
	@$(BIN)/kms serve

# docs/openapi.json: the API description GET /v1/kms/openapi.json serves (a test fails when stale).
openapi: $(SERVE_STAMP)
	$(BIN)/kms openapi --output docs/openapi.json

# docs/settings.md: the table of settings, made from their declarations (a test fails when stale).
settings-doc: $(SERVE_STAMP)
	$(BIN)/kms settings-table --output docs/settings.md

# newman, pinned by deploy/postman/package-lock.json; the newman test is skipped without it.
newman:
	npm ci --prefix deploy/postman --no-audit --no-fund

# build/wheelhouse: kms and its runtime dependencies as wheels for the container image's Python
# (Debian bookworm's 3.11), which deploy/Dockerfile installs from without network.
wheelhouse: $(SERVE_STAMP)
	scripts/wheelhouse.sh $(BIN)/python build/wheelhouse

# POSTGRES_TEST_DSN (a role with CREATEDB) adds the PostgreSQL tests; .ci/run sets it.
# TEST_WORKERS pytest-xdist processes share the tests: most of a test's time is waiting (server
# starts, PBKDF2 in another process, timeouts), so more workers than cores pay. TEST_WORKERS=0
# runs everything in one process, as before. loadfile hands each module whole to the next idle
# worker, in the order tests/conftest.py sets (the longest first): a module's own fixtures (an
# image build, a server of its own, an old release) are made once per run, not once per worker.
# Bytecode is cached even where PYTHONDONTWRITEBYTECODE is set: every `kms` command and server a
# test starts imports kms, and every worker collects every test module; compiled from source each
# time, that was about a tenth of the suite's CPU (a worker's collection alone: 9 s, 3 s cached).
TEST_WORKERS ?= 4
PYTEST_ARGS ?=  # more pytest options, e.g. PYTEST_ARGS="--durations=30"
test: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) \
		$(if $(POSTGRES_TEST_DSN),--postgres-dsn=$(POSTGRES_TEST_DSN)) $(PYTEST_ARGS)

# Not part of `make test`: tools/mutants (its own package and dependencies, installed into this
# environment) mutates the modules its pyproject.toml names, runs each mutant's tests in a copy,
# and writes docs/mutants.md and docs/mutants.json (tools/mutants/README.md). Its own tests run
# first (a second). One area at a time: MUTANTS_ARGS="--only kms/audit.py kms/api/audit.py".
$(MUTANTS_STAMP): $(STAMP) tools/mutants/pyproject.toml
	$(BIN)/python -m pip install --quiet -e tools/mutants
	touch $(MUTANTS_STAMP)

mutants: $(MUTANTS_STAMP)
	cd tools/mutants && $(abspath $(BIN))/python -m pytest -q
	$(BIN)/python -m kms_mutants run $(if $(POSTGRES_TEST_DSN),--postgres-dsn=$(POSTGRES_TEST_DSN)) $(MUTANTS_ARGS)

# docs/mutants.md again from docs/mutants.json, after a verdict is written in tools/mutants/verdicts.json.
mutants-report: $(MUTANTS_STAMP)
	$(BIN)/python -m kms_mutants report

# Re-applies each bug of issue 15 (scripts/known_bugs/*.patch) in a copy; each must fail a test.
known-bugs: $(STAMP)
	nice -n 19 $(BIN)/python scripts/known_bugs.py

# Not part of `make test`: a real server over mTLS, about 4 to 5 minutes (docs/performance.md).
# BENCH_SECONDS per scenario (default 4); POSTGRES_BENCH_DSN (a role with CREATEDB) adds
# PostgreSQL (a database kept between runs); BENCH_BACKEND=pkcs11 or both runs SQLite on a SoftHSM2
# token too; BENCH_ARGS passes more (e.g. --only encrypt_256).
bench: $(STAMP)
	$(BIN)/python -m bench $(if $(POSTGRES_BENCH_DSN),--postgres-dsn=$(POSTGRES_BENCH_DSN)) $(if $(BENCH_BACKEND),--backend=$(BENCH_BACKEND)) $(BENCH_ARGS)

# What make lint checks is what make format rewrites.
LINTED := kms migrations tests scripts bench tools
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache .hypothesis
