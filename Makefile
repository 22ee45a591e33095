# The two set-up commands of the README are `make demo` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
BENCH_STAMP := $(VENV)/.bench-installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: deploy-tools demo up dashboard-picture test lint unit integration e2e fuzz chaos bench bench-smoke bench-e2e prerequisites demo-prerequisites kafka-up kafka-down postgres-up postgres-down docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# The benchmarks' own extra (confluent-kafka, compared with kafka-python): `make bench` only, never `make test`.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	rm -f $(VENV)/.bench-installed-* && touch $(BENCH_STAMP)

## What the tests need (Java 17, Maven, PostgreSQL's server binaries, Chromium, promtool and prometheus).
prerequisites: $(STAMP)
	$(BIN)/python -m devtools.prerequisites

## What `make demo`, `make up` and `make kafka-up` need: Java 17 and Maven for Kafka (none with
## EXPORT_KAFKA_BOOTSTRAP_SERVERS set).
demo-prerequisites: $(STAMP)
	$(BIN)/python -m devtools.prerequisites demo

## helm, kubeconform and kube-score, built once from the Go module proxy (the chart's tests use them).
deploy-tools: prerequisites
	$(BIN)/python -m devtools.prerequisites deploy-tools

## A local end-to-end export of 10,000 demo members on real Kafka, HTTP and SMTP servers.
demo: demo-prerequisites
	$(BIN)/python -m devtools.demo

## The whole local stack with demo data, kept running for the web console (its URL and demo tokens printed) until Ctrl-C.
up: demo-prerequisites
	$(BIN)/python -m devtools.up $(UP_ARGS)

# The long forms of tests CI runs bounded (marked `long`): `make fuzz` and `make chaos` run them.
BOUNDED := -m "not long"

# The suite on two workers (pytest-xdist), each with its own Kafka broker and PostgreSQL: a test file runs whole on one
# worker, the browser tests all on one (tests/conftest.py). Files go out in the order collected, the long browser,
# chaos and e2e ones first and the unit tests' many short ones last (xdist's default, most tests first, left a worker
# alone with the chaos file's 4 long tests at the end). One process, for debugging: make test PARALLEL=
PARALLEL ?= -n 2 --dist loadfile --no-loadscope-reorder

## Lint, type-check and run the whole suite (unit, integration, e2e, the bounded fuzz and chaos) on real infrastructure.
test: prerequisites deploy-tools lint
	$(BIN)/python -m devtools.kafka_broker fetch >/dev/null
	$(BIN)/pytest --durations=40 $(BOUNDED) $(PARALLEL)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(BOUNDED) $(PARALLEL)

integration: prerequisites
	$(BIN)/pytest tests/integration $(BOUNDED) $(PARALLEL)

e2e: prerequisites
	$(BIN)/pytest tests/e2e $(BOUNDED) $(PARALLEL)

## The whole fuzz suite: what `make test` runs bounded (2,000 cases a property; Schemathesis with the admin token on
## 10 examples, the coverage phase's valid values only) and the long forms (10,000 cases a property; Schemathesis
## with every token on 40 examples and the whole coverage phase, in-process and over HTTP): about 8 minutes on 2 cores.
fuzz: prerequisites
	$(BIN)/pytest -m fuzz --durations=10

## Every fault of the chaos suite (broker kill/pause/latency, catalog and member-store outages, partner resets,
## SIGKILL per service) on 200,000 members a run; prints the table and writes docs/chaos.md. CI runs a bounded
## selection (tests/chaos). Smaller: CHAOS_ARGS="--members 20000", one fault: CHAOS_ARGS="--only paused".
## First, the long forms of the outage tests CI runs shorter (the SMTP server down for 30 s).
chaos: prerequisites
	$(BIN)/pytest -m "long and not fuzz"
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

## Benchmarks: they print figures and ratios to a baseline measured in the same run (never pass/fail).
bench: prerequisites $(BENCH_STAMP)
	$(BIN)/python -m tests.benchmarks.bench_cli_startup
	$(BIN)/python -m tests.benchmarks.bench_scheduler
	$(BIN)/python -m tests.benchmarks.bench_delete_in_use
	$(BIN)/python -m tests.benchmarks.bench_delete_in_use --postgres
	$(BIN)/python -m tests.benchmarks.bench_query_save
	$(BIN)/python -m tests.benchmarks.bench_query_save --postgres
	$(BIN)/python -m tests.benchmarks.bench_run_start
	$(BIN)/python -m tests.benchmarks.bench_burst_start --runs 300 --turns 1 --extractors 1 2
	$(BIN)/python -m tests.benchmarks.bench_extractor
	$(BIN)/python -m tests.benchmarks.bench_changes
	$(BIN)/python -m tests.benchmarks.bench_http_clients
	$(BIN)/python -m tests.benchmarks.bench_rendering
	$(BIN)/python -m tests.benchmarks.bench_notifier_fold
	$(BIN)/python -m tests.benchmarks.bench_round_acks
	$(BIN)/python -m tests.benchmarks.bench_kafka_clients --turns 2 --modes idle \
		--batch-records 400 --single-records 300 --produce-records 400
	$(BIN)/python -m tests.benchmarks.bench_batch_polls --repeat 1
	$(BIN)/python -m tests.benchmarks.bench_fleet_limits
	$(BIN)/python -m tests.benchmarks.bench_dispatcher
	$(BIN)/python -m tests.benchmarks.bench_dispatcher_cpu
	$(BIN)/python -m tests.benchmarks.bench_inspector
	$(BIN)/python -m tests.benchmarks.bench_reason_masking
	$(BIN)/python -m tests.benchmarks.bench_batch_decoding
	$(BIN)/python -m tests.benchmarks.bench_e2e

## Every benchmark at a tiny size (tests/benchmarks/smoke.py), on one broker and one PostgreSQL started for them:
## each must run to its end and print its figures (no timing judged). About 6 minutes, nearly 3 of them
## bench_scheduler's bursts (due at whole minutes). The suite runs those that fit its budget
## (tests/integration/test_benchmarks_smoke.py); `python -m tests.benchmarks.smoke --list` says which.
bench-smoke: prerequisites $(BENCH_STAMP)
	$(BIN)/python -m tests.benchmarks.smoke $(BENCH_SMOKE_ARGS)

## The whole pipeline end to end (1M members in batches of 500, 100k one-member requests) beside its raw ceilings
## and a naive script, same run; writes docs/benchmarks/e2e.{png,md}. Smaller: BENCH_E2E_ARGS="--members 20000".
bench-e2e: prerequisites
	$(BIN)/python -m tests.benchmarks.bench_e2e $(BENCH_E2E_ARGS)

## docs/dashboard.png: the Grafana dashboard's panels drawn from the Prometheus of the e2e test (tests/e2e/test_prometheus_dashboards.py).
dashboard-picture: prerequisites
	MEMBER_EXPORT_DASHBOARD_PICTURE=docs/dashboard.png $(BIN)/pytest tests/e2e/test_prometheus_dashboards.py -q -k picture

## Long-lived local infrastructure for working by hand (ports 9092 and 5433); `postgres-up` finds (on Debian as root,
## installs) PostgreSQL's server binaries itself, as the tests do.
kafka-up: demo-prerequisites
	$(BIN)/python -m devtools.kafka_broker start --port 9092
kafka-down: $(STAMP)
	$(BIN)/python -m devtools.kafka_broker stop
postgres-up: $(STAMP)
	$(BIN)/python -m devtools.postgres start --port 5433
postgres-down: $(STAMP)
	$(BIN)/python -m devtools.postgres stop

## Regenerate docs/asyncapi.yaml from the event models.
docs: $(STAMP)
	$(BIN)/python -m shared.asyncapi > docs/asyncapi.yaml

clean:
	rm -rf $(VENV) .local .mypy_cache .ruff_cache .pytest_cache
