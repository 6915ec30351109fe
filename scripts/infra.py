#!/usr/bin/env python3
"""Local infrastructure for the gateway: Apache Kafka (KRaft), PostgreSQL and Prometheus on 127.0.0.1.

Standard library only: this script runs before the project's virtualenv has any packages. The work is done
by the package next to it, ``scripts/localinfra`` (one module per component).

Commands::

    python3 scripts/infra.py fetch                  # resolve the Kafka jars with Maven (no-op when current)
    python3 scripts/infra.py up [--kafka-nodes 1|3] [--no-postgres] [--no-kafka] [--no-prometheus]
    python3 scripts/infra.py status                 # one line per component; exit 0 when all expected are up
    python3 scripts/infra.py down [--kafka-nodes 1|3|all] [--no-postgres] [--no-kafka] [--no-prometheus]
    python3 scripts/infra.py kill-broker N [--kafka-nodes 1|3]   # SIGKILL broker N (fault tests)
    python3 scripts/infra.py start-broker N [--kafka-nodes 1|3]  # start broker N again, wait until it serves
    python3 scripts/infra.py reset                  # down + delete all data (the jars are kept)

``status`` expects the components of the last ``up`` that were not brought ``down`` since (the default stack
when nothing is), so after ``kill-broker`` it exits 1 until ``start-broker``.

``start-broker`` right after ``kill-broker`` takes about 10 s: the controller rejects the new registration
(DUPLICATE_BROKER_REGISTRATION) until the killed broker's session expires (broker.session.timeout.ms, 9 s).
A 3-node broker without a controller majority gives up and exits after 60 s.

The Kafka command-line tools are on the same classpath, e.g.
``java -cp "$INFRA_DIR/kafka/lib/*" org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list``
(also ``org.apache.kafka.tools.ConsoleProducer``, ``org.apache.kafka.tools.consumer.ConsoleConsumer``);
``scripts/kafka-tool`` runs them with the gateway's bootstrap servers and security settings.

``up`` prints only ``KEY=value`` lines on stdout (everything else goes to stderr)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
    DATABASE_URL=postgresql://gateway:gateway@127.0.0.1:5433/gateway

The same lines are written to ``$INFRA_DIR/infra.env``.

Prometheus (when ``prometheus`` is on PATH, Debian's package) runs with ``ops/prometheus/prometheus.yml``, the
file the compose stack uses too; it scrapes the listeners named in ``ops/prometheus/targets/local.json``
(127.0.0.1:8080..8083, where ``make run`` serves them), evaluates ``ops/prometheus/alerts.yml``, and keeps its
data in ``$INFRA_DIR/prometheus``. When the port is taken by another process, ``up`` says so and goes on without it.

Kafka modes: a single combined broker+controller (``--kafka-nodes 1``, data in ``$INFRA_DIR/kafka-1node``) or
three combined nodes (``--kafka-nodes 3``, data in ``$INFRA_DIR/kafka-3node/node-N``). Both modes use the same
ports, so they never run at the same time: ``up`` in one mode first stops the other mode (with a message on
stderr); the data of the stopped mode is kept.

PostgreSQL keeps its cluster in ``$INFRA_DIR/postgres`` (socket and log in ``$INFRA_DIR/postgres-run``), except
for root: the server then runs as the ``postgres`` user, who may not be able to enter the checkout (``/root``,
a ``mktemp -d``), so the cluster lives in ``~postgres/kafka-log-gateway/<hash of INFRA_DIR>/`` instead
(``/var/lib/postgresql/...`` on Debian); ``status`` shows where. See scripts/localinfra/postgres.py.

Environment:
    INFRA_DIR        state directory (default ``<repo>/.local``); git-ignored via its own ``.gitignore``.
    KAFKA_PORT_BASE  first Kafka port (default 9092). Node N uses base+2(N-1) (PLAINTEXT) and base+2(N-1)+1
                     (CONTROLLER): 9092/9093, 9094/9095, 9096/9097.
    PG_PORT          PostgreSQL TCP port (default 5433, so a Debian default cluster on 5432 does not clash).
    PROMETHEUS_PORT  Prometheus web port (default 9090).
    KAFKA_SECURE     "1": the single node also listens with SASL_PLAINTEXT (base+10), SSL (base+11) and
                     SASL_SSL (base+12); SASL user gateway/gateway-secret with PLAIN, SCRAM-SHA-256 and
                     SCRAM-SHA-512; TLS from a CA made under $INFRA_DIR/tls (for the gateway's security tests).
    JAVA_HOME, JAVA  Java runtime (default: ``java`` on PATH).
    MVN              Maven executable (default: ``mvn`` on PATH).
    PG_BIN           PostgreSQL server binaries (default ``/usr/lib/postgresql/15/bin``, else the newest found).

Two checkouts on one machine need their own ports (the defaults are fixed): give one of them other
``KAFKA_PORT_BASE``, ``PG_PORT`` and ``PROMETHEUS_PORT``; their state never mixes, each ``INFRA_DIR`` has its own.

From Python, use the package (``from scripts import localinfra``; see its docstring).
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from scripts.localinfra.cli import main

    sys.exit(main())
