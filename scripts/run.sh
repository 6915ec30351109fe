#!/usr/bin/env bash
# Run the gateway in the foreground. Starts the local Kafka (and PostgreSQL) first unless
# KAFKA_BOOTSTRAP_SERVERS (and DATABASE_URL) point at running ones.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && args+=(--no-kafka)
[ -n "${DATABASE_URL:-}" ] && args+=(--no-postgres)
if [ "${#args[@]}" -lt 2 ]; then
  served=$(python3 scripts/infra.py up "${args[@]}")
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    echo "using $line" >&2
    export "${line?}"
  done <<<"$served"
fi
exec .venv/bin/python -m app "$@"
