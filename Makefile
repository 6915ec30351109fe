# The two commands a new user needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Processes for the tests that may share the machine (make test TEST_WORKERS=1 runs them one at a time).
TEST_WORKERS ?= 2
INFRA := $(PYTHON) scripts/infra.py
# The protobuf modules the remote_write and Loki dialects import: compiled by scripts/protos.py from the
# upstream .proto files ops/proto/upstream.toml pins (downloaded once into .local/protos/), never committed.
PROTOS := app/proto/prometheus/remote_pb2.py app/proto/prometheus/types_pb2.py app/proto/loki/push_pb2.py \
	app/proto/gogoproto/gogo_pb2.py

.PHONY: run test deps venv protos layers infra-up infra-up-3 infra-down infra-status kafka-tool drill typecheck unit clean bench-transactions bench-overload bench-infrastructure bench-scaleout bench fuzz

## run: set up, start the local Kafka and PostgreSQL unless configured elsewhere, run the gateway
run: deps venv
	@scripts/run.sh

## test: set up, then type-check, check the layers and run every test (the tests start the local Kafka and PostgreSQL):
##   those that stop brokers or time the gateway under load (marked fault) one at a time, the others on TEST_WORKERS processes
test: deps venv typecheck layers
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not fault"
	$(PY) -m pytest -m fault

## fuzz: schemathesis drives every listener by its OpenAPI document
fuzz: deps venv
	$(PY) -m pytest -m fuzz

## unit: only the tests that need no broker or database
unit: venv
	$(PY) -m pytest -m "not integration and not fuzz"

typecheck: venv
	$(PY) -m mypy

## docs: write docs/configuration.md from the declaration of the settings in app/config.py
.PHONY: docs
docs: venv
	$(PY) scripts/config_doc.py

## layers: the import-linter contracts of pyproject.toml (layers, adapters, no import cycles)
layers: venv
	$(VENV)/bin/lint-imports

## deps: install the Debian packages the project needs when they are missing (Java, Maven, PostgreSQL)
deps:
	@bash .ci/install-system-deps.sh

venv: $(VENV)/.installed $(PROTOS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## protos: compile app/proto from the upstream .proto files (make venv does it when they are missing or out of date)
protos: $(PROTOS)

$(PROTOS) &: ops/proto/upstream.toml scripts/protos.py $(VENV)/.installed
	$(PY) scripts/protos.py

## infra-up: start the single-node Kafka, PostgreSQL and Prometheus (idempotent); prints the settings they serve
infra-up: deps
	@$(INFRA) up

## infra-up-3: start the three-node Kafka cluster (min.insync.replicas=2) and PostgreSQL
infra-up-3: deps
	@$(INFRA) up --kafka-nodes 3

## infra-down: stop the local Kafka and PostgreSQL (idempotent)
infra-down:
	@$(INFRA) down

infra-status:
	@$(INFRA) status

## kafka-tool: Kafka's own tools and kcat against the configured cluster, e.g. make kafka-tool ARGS='kafka-topics --list'
kafka-tool:
	@scripts/kafka-tool $(ARGS)

## drill: the reference design's failure scenarios (broker down, partition, crash, overload) on a stack of their own
drill: deps venv
	$(PY) scripts/drill.py $(ARGS)

## bench-overload: p99 of accepted requests at half and at twice the rate limit, as a table
bench-overload: venv
	$(PY) scripts/bench_overload.py

## bench-transactions: end-to-end transaction ingest (hey) and the outbox driver comparison, as tables
bench-transactions: venv
	@bash .ci/install-system-deps.sh --bench
	$(PY) scripts/bench_transactions.py
	$(PY) scripts/bench_outbox_driver.py

## bench-infrastructure: the host collector and agents' metrics at 3,000 events/s, as a table
bench-infrastructure: venv
	@bash .ci/install-system-deps.sh --bench
	$(PY) scripts/bench_infrastructure.py

## bench: ceilings (raw producer, bare hypercorn), the gateway and the Strimzi Kafka Bridge in one table, with targets
##   (BASELINE=<commit> also measures that commit's gateway rows, from a worktree; ONLY=single,batch500 runs those rows)
bench: venv
	@bash .ci/install-system-deps.sh --bench
	$(PY) scripts/bench.py $(if $(BASELINE),--baseline '$(BASELINE)') $(if $(ONLY),--only '$(ONLY)')

## bench-scaleout: single-event throughput of one process, --workers 2, and a gateway before two shippers
bench-scaleout: venv
	@bash .ci/install-system-deps.sh --bench
	$(PY) scripts/bench_scaleout.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache *.egg-info $(sort $(dir $(PROTOS)))
