#!/usr/bin/env bash
# Install the system packages the local infrastructure (scripts/infra.py) needs on Debian 12, only when missing:
#   java (17+)  -> openjdk-17-jre-headless      mvn      -> maven
#   PostgreSQL  -> postgresql (server 15)       promtool -> prometheus
#   chromium    -> chromium (headless, for the status page's browser test)
#   prometheus-node-exporter, collectd -> prometheus-node-exporter, collectd-core + libyajl2 (real agents)
# Runs `apt-get update` once, and only when something has to be installed. As non-root it prints the
# command to run instead and exits 1. Safe to run repeatedly.
#
# Packages must not start services while being installed here: Debian's postgresql would start its `main`
# cluster and prometheus would listen on 0.0.0.0:9090. A temporary /usr/sbin/policy-rc.d prevents that
# (unless one exists already). Any Debian cluster left on our port (PG_PORT, default 5433) is stopped.
set -euo pipefail

PG_PORT="${PG_PORT:-5433}"
PG_SERVER_BIN=/usr/lib/postgresql/15/bin/postgres

have() { command -v "$1" >/dev/null 2>&1; }

java_major() {
  # Prints the major version of `java` on PATH (e.g. 17), or 0 when it cannot be determined.
  local line
  line="$(java -version 2>&1 | head -n 1)" || true
  if [[ $line =~ \"([0-9]+)(\.([0-9]+))? ]]; then
    if [[ ${BASH_REMATCH[1]} == 1 ]]; then echo "${BASH_REMATCH[3]:-0}"; else echo "${BASH_REMATCH[1]}"; fi
  else
    echo 0
  fi
}

missing=()
if ! have java; then
  missing+=(openjdk-17-jre-headless)
elif (( $(java_major) < 17 )); then
  echo "java on PATH is older than 17; installing openjdk-17-jre-headless (select it with update-alternatives)" >&2
  missing+=(openjdk-17-jre-headless)
fi
have mvn || missing+=(maven)
[[ -x $PG_SERVER_BIN ]] || missing+=(postgresql)
have promtool || missing+=(prometheus)
have openssl || missing+=(openssl)  # the test broker's TLS certificates (KAFKA_SECURE=1)
have curl || missing+=(curl)  # scripts/test-producers.sh
have chromium || missing+=(chromium)  # tests/status: the status page in headless Chromium
# tests/shippers/test_elasticsearch.py: rsyslog's omelasticsearch, run by the test with a configuration of its own.
have rsyslogd || missing+=(rsyslog)
compgen -G '/usr/lib/*/rsyslog/omelasticsearch.so' >/dev/null || missing+=(rsyslog-elasticsearch)
have kcat || missing+=(kcat)  # scripts/kafka-tool kcat, beside Kafka's own tools (tests/ops/test_kafka_tool.py)
# tests/dialects: the real agents. Node exporter is what the Prometheus agent scrapes (run on a port of
# the test's own; its service is kept from starting below); collectd-core only recommends the libyajl
# its write_http plugin needs.
have prometheus-node-exporter || missing+=(prometheus-node-exporter)
have collectd || missing+=(collectd-core)
ldconfig -p 2>/dev/null | grep 'libyajl\.so\.2 ' >/dev/null || missing+=(libyajl2)  # no -q: ldconfig must not die of SIGPIPE
# tests/sockets: util-linux logger, rsyslog (its omfwd over TCP, and over TLS with rsyslog-gnutls) and syslog-ng as
# syslog clients. Debian installs one system-log-daemon at a time, and rsyslog is it: syslog-ng-core is unpacked
# under .local/syslog-ng (never installed, never started as a service) and the tests run it from there, with the
# libraries it links installed here.
have logger || missing+=(bsdutils)
have rsyslogd || missing+=(rsyslog)
dpkg -s rsyslog-gnutls >/dev/null 2>&1 || missing+=(rsyslog-gnutls)
for lib in libivykis0 libnet1 libjson-c5 libwrap0 libglib2.0-0 libpcre3; do
  dpkg -s "$lib" >/dev/null 2>&1 || missing+=("$lib")
done
SYSLOG_NG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.local/syslog-ng"

unpack_syslog_ng() {
  [[ -x $SYSLOG_NG_DIR/usr/sbin/syslog-ng ]] && return 0
  have syslog-ng && return 0
  if [[ $EUID -ne 0 ]]; then
    echo "warning: no syslog-ng; run this script as root to unpack it under $SYSLOG_NG_DIR" >&2
    return 0
  fi
  local download
  download="$(mktemp -d)"
  chmod 755 "$download"  # apt downloads as _apt where it can
  (cd "$download" && { apt-get download syslog-ng-core 2>/dev/null || { apt-get update && apt-get download syslog-ng-core; }; })
  mkdir -p "$SYSLOG_NG_DIR"
  dpkg-deb -x "$download"/syslog-ng-core_*.deb "$SYSLOG_NG_DIR"
  rm -rf "$download"
  echo "syslog-ng unpacked under $SYSLOG_NG_DIR" >&2
}

# --bench: also the HTTP load tools the benchmarks under scripts/ drive the gateway with.
if [[ ${1:-} == --bench ]]; then
  have hey || missing+=(hey)
  have wrk || missing+=(wrk)
fi

stop_debian_clusters_on_our_port() {
  # Debian's postgresql-common creates a `main` cluster (normally on 5432, but on the next free port when
  # 5432 is taken). Make sure none runs, or starts at boot, on the port scripts/infra.py uses.
  have pg_lsclusters || return 0
  local ver name port status _rest
  while read -r ver name port status _rest; do
    [[ $port == "$PG_PORT" ]] || continue
    if [[ $EUID -ne 0 ]]; then
      echo "warning: Debian cluster $ver/$name uses port $PG_PORT; stop it with: sudo pg_ctlcluster $ver $name stop" >&2
      continue
    fi
    if [[ $status == online* ]]; then
      echo "stopping Debian PostgreSQL cluster $ver/$name on port $PG_PORT (scripts/infra.py uses that port)" >&2
      pg_ctlcluster "$ver" "$name" stop
    fi
    if [[ -f /etc/postgresql/$ver/$name/start.conf ]]; then
      echo manual > "/etc/postgresql/$ver/$name/start.conf"
    fi
  done < <(pg_lsclusters -h 2>/dev/null || true)
}

if (( ${#missing[@]} == 0 )); then
  echo "system dependencies present (java, mvn, postgresql 15, promtool, chromium)" >&2
  stop_debian_clusters_on_our_port
  unpack_syslog_ng
  exit 0
fi

install_cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $EUID -ne 0 ]]; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "run as root:  sudo sh -c '$install_cmd'" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# Temporary: keep services from starting during .ci/install-system-deps.sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"

stop_debian_clusters_on_our_port
# rsyslog's package enables its service; the policy above kept it from starting, and it stays off.
if [[ " ${missing[*]} " == *" rsyslog "* ]] && have systemctl; then systemctl disable rsyslog >/dev/null 2>&1 || true; fi
unpack_syslog_ng
echo "system dependencies installed" >&2
