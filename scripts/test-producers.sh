#!/usr/bin/env bash
# Smoke test of a running gateway with curl: every listener's /health, /ready, /metrics and
# /openapi.json, then a log, a batch, a metric, a metric batch and a transaction (sent twice with
# its Idempotency-Key: one event), each where its shipper and the gateway serve it. Prints PASS or
# FAIL per check and exits 1 on any FAIL.
#
#   scripts/test-producers.sh                                            # 127.0.0.1, ports 8080-8083
#   TARGET_HOST=127.0.0.1 GATEWAY_PORT=18080 APPLICATION_PORT=18081 \
#     INFRASTRUCTURE_PORT=18082 TRANSACTION_PORT=18083 API_KEY=s3cret scripts/test-producers.sh
set -uo pipefail

host=${TARGET_HOST:-127.0.0.1}
declare -A base=(
  [gateway]=http://$host:${GATEWAY_PORT:-8080}
  [application]=http://$host:${APPLICATION_PORT:-8081}
  [infrastructure]=http://$host:${INFRASTRUCTURE_PORT:-8082}
  [transaction]=http://$host:${TRANSACTION_PORT:-8083}
)
auth=()
[ -n "${API_KEY:-}" ] && auth=(-H "Authorization: Bearer $API_KEY")
failures=0
body=""

# check NAME STATUS TEXT CURL-ARGS...: PASS when the answer has that status and its body holds TEXT.
check() {
  local name=$1 expected=$2 text=$3 out status
  shift 3
  out=$(curl -sS --max-time 10 "${auth[@]}" -w '\n%{http_code}' "$@" 2>&1)
  status=${out##*$'\n'}
  body=${out%$'\n'*}
  if [ "$status" = "$expected" ] && [[ $body == *"$text"* ]]; then
    echo "PASS  $name"
  else
    body=${body//$'\n'/ }
    echo "FAIL  $name: expected $expected with '$text', got $status ${body:0:300}"
    failures=$((failures + 1))
  fi
}

for listener in gateway application infrastructure transaction; do
  url=${base[$listener]}
  check "$listener /health" 200 '"alive"' "$url/health"
  check "$listener /ready" 200 '"ready"' "$url/ready"
  check "$listener /metrics" 200 'http_requests_total' "$url/metrics"
  check "$listener /openapi.json" 200 '"openapi"' "$url/openapi.json"
done

json=(-H 'Content-Type: application/json' -X POST)
log='{"source":"smoke-test","level":"INFO","message":"test-producers.sh"}'
for target in application gateway; do
  url=${base[$target]}
  check "log via $target" 202 '"eventId"' "${json[@]}" "$url/api/v1/logs" -d "$log"
  check "log batch via $target" 202 '"count":2' "${json[@]}" "$url/api/v1/logs/batch" -d "{\"logs\":[$log,$log]}"
done

metric="{\"host\":\"smoke-test\",\"metric\":\"cpu.utilization\",\"value\":12.5,\"unit\":\"percent\",\"labels\":{\"check\":\"smoke\"},\"timestamp\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
for target in infrastructure gateway; do
  url=${base[$target]}
  check "metric via $target" 202 '"eventId"' "${json[@]}" "$url/api/v1/metrics" -d "$metric"
  check "metric batch via $target" 202 '"count":2' "${json[@]}" "$url/api/v1/metrics/batch" -d "{\"metrics\":[$metric,$metric]}"
done

transaction_body='{"userId":"smoke-test","type":"PAYMENT","amount":"1.00","currency":"USD"}'
for target in transaction gateway; do
  url=${base[$target]}
  key="smoke-test-$target-$(date +%s%N)"
  check "transaction via $target" 202 '"eventId"' "${json[@]}" "$url/api/v1/transactions" -H "Idempotency-Key: $key" -d "$transaction_body"
  first=$body
  check "transaction replayed via $target" 202 '"eventId"' "${json[@]}" "$url/api/v1/transactions" -H "Idempotency-Key: $key" -d "$transaction_body"
  if [[ $first == *'"eventId"'* && $body == "$first" ]]; then
    echo "PASS  transaction replay via $target gets the same event id"
  else
    echo "FAIL  transaction replay via $target: first $first, then $body"
    failures=$((failures + 1))
  fi
  id=$(sed -n 's/.*"eventId":"\([^"]*\)".*/\1/p' <<<"$first")
  check "transaction status via $target" 200 "\"eventId\":\"$id\"" "$url/api/v1/transactions/$id"
done

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "every check passed"
