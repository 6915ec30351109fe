"""The local infrastructure behind scripts/infra.py: Kafka (KRaft), PostgreSQL and Prometheus on 127.0.0.1.

Standard library only: it runs before the project's virtualenv has any packages. One module per component
(:mod:`.kafka` with :mod:`.jars` and :mod:`.tls`, :mod:`.postgres`, :mod:`.prometheus`), what they share
(:mod:`.settings`, :mod:`.process`, :mod:`.state`), the whole stack's operations (:mod:`.stack`) and the
command line (:mod:`.cli`).

From Python, with the repository root on ``sys.path`` (as in the tests)::

    from scripts import localinfra
    env = localinfra.up(kafka_nodes=3)       # {"KAFKA_BOOTSTRAP_SERVERS": ..., "DATABASE_URL": ...}
    localinfra.kill_broker(2); localinfra.start_broker(2)
    localinfra.broker_pid(1)                 # int or None

Failures raise :class:`InfraError` (the command line prints the message and exits 1).
"""

from .jars import fetch, jars_complete
from .kafka import KafkaNode, bootstrap_servers, node_layout
from .postgres import database_url, postgres_pid
from .prometheus import prometheus_pid
from .settings import InfraError, Settings
from .stack import broker_pid, broker_ready, down, kill_broker, reset, start_broker, status, up

__all__ = [
    "InfraError",
    "KafkaNode",
    "Settings",
    "bootstrap_servers",
    "broker_pid",
    "broker_ready",
    "database_url",
    "down",
    "fetch",
    "jars_complete",
    "kill_broker",
    "node_layout",
    "postgres_pid",
    "prometheus_pid",
    "reset",
    "start_broker",
    "status",
    "up",
]
