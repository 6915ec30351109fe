#!/usr/bin/env bash
# The reference design's load test: 10,000 single application logs against a running gateway,
# then every accepted event read back from Kafka. Exits 1 when one is missing or there twice.
#
#   scripts/load-test.sh                                   # http://127.0.0.1:8080, 50 clients
#   URL=http://127.0.0.1:8081 CONCURRENCY=100 scripts/load-test.sh --topic my-app-logs --json run.json
#
# Kafka is $KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092); more flags go to scripts/loadgen.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" scripts/loadgen.py \
  --url "${URL:-http://127.0.0.1:8080}" --mode logs --requests 10000 --concurrency "${CONCURRENCY:-50}" --verify "$@"
