"""librdkafka's statistics as Prometheus metrics.

librdkafka hands its statistics (``statistics.interval.ms``) to ``stats_cb`` as a JSON string,
inside ``poll()`` (the channel profiles poll on the trio thread, the relay in a worker thread);
the adapters only keep the latest string. This collector decodes it at scrape time, on the trio
thread, once per new string (every listener scrapes the same registry). Brokers are labelled by
their name in the cluster (``host:port/id``): as many values as the cluster has brokers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The latest JSON of a service's client, or of each of its clients (a memory-mode stream has two), or None.
StatisticsSource = Callable[[], str | Sequence[str] | None]

MICROSECONDS = 1e-6


class _Window(msgspec.Struct):
    """A rolling window of librdkafka: values over the last statistics interval, in microseconds."""

    avg: int = 0
    p50: int = 0
    p99: int = 0
    cnt: int = 0


class _Broker(msgspec.Struct):
    name: str
    nodeid: int = -1
    outbuf_cnt: int = 0
    waitresp_cnt: int = 0
    txretries: int = 0
    rtt: _Window = msgspec.field(default_factory=_Window)


class _Statistics(msgspec.Struct):
    msg_cnt: int = 0
    msg_size: int = 0
    tx: int = 0
    rx: int = 0
    brokers: dict[str, _Broker] = msgspec.field(default_factory=dict)


_decode = msgspec.json.Decoder(_Statistics).decode

# (family name, kind, help, labels)
_FAMILIES = (
    ("kafka_client_queue_messages", "gauge", "Messages in librdkafka's producer queue (msg_cnt).", ["service"]),
    ("kafka_client_queue_bytes", "gauge", "Bytes of the messages in librdkafka's producer queue (msg_size).",
     ["service"]),
    ("kafka_client_retries", "counter", "Requests to the brokers sent again, as librdkafka counts them (txretries).",
     ["service"]),
    ("kafka_client_requests", "counter", "Requests sent to the brokers (tx).", ["service"]),
    ("kafka_client_responses", "counter", "Responses received from the brokers (rx).", ["service"]),
    ("kafka_broker_rtt_seconds", "gauge",
     "Broker round-trip time over the last statistics interval, by quantile (0.5, 0.99).",
     ["service", "broker", "quantile"]),
    ("kafka_broker_rtt_average_seconds", "gauge", "Average broker round-trip time over the last statistics interval.",
     ["service", "broker"]),
    ("kafka_broker_outbuf_requests", "gauge", "Requests waiting to be sent to a broker.", ["service", "broker"]),
    ("kafka_broker_waitresp_requests", "gauge", "Requests sent to a broker and waiting for its response.",
     ["service", "broker"]),
)

Samples = list[tuple[str, list[str], float]]


def _merged(clients: list[_Statistics]) -> _Statistics:
    """One service's clients as one: counts summed, each broker's round trip from the client that
    made the most requests to it in the window."""
    if len(clients) == 1:
        return clients[0]
    brokers: dict[str, _Broker] = {}
    for client in clients:
        for name, broker in client.brokers.items():
            seen = brokers.get(name)
            if seen is None:
                brokers[name] = _Broker(
                    broker.name, broker.nodeid, broker.outbuf_cnt, broker.waitresp_cnt, broker.txretries, broker.rtt
                )
                continue
            seen.outbuf_cnt += broker.outbuf_cnt
            seen.waitresp_cnt += broker.waitresp_cnt
            seen.txretries += broker.txretries
            if broker.rtt.cnt > seen.rtt.cnt:
                seen.rtt = broker.rtt
    return _Statistics(
        msg_cnt=sum(c.msg_cnt for c in clients), msg_size=sum(c.msg_size for c in clients),
        tx=sum(c.tx for c in clients), rx=sum(c.rx for c in clients), brokers=brokers,
    )


def _samples(service: str, stats: _Statistics) -> Samples:
    out: Samples = [
        ("kafka_client_queue_messages", [service], stats.msg_cnt),
        ("kafka_client_queue_bytes", [service], stats.msg_size),
        ("kafka_client_retries", [service], sum(b.txretries for b in stats.brokers.values())),
        ("kafka_client_requests", [service], stats.tx),
        ("kafka_client_responses", [service], stats.rx),
    ]
    for broker in stats.brokers.values():
        if broker.nodeid < 0:  # bootstrap and internal brokers: not members of the cluster
            continue
        labels = [service, broker.name]
        out.append(("kafka_broker_outbuf_requests", labels, broker.outbuf_cnt))
        out.append(("kafka_broker_waitresp_requests", labels, broker.waitresp_cnt))
        if broker.rtt.cnt:  # no request in the window: no round trip to report
            out.append(("kafka_broker_rtt_seconds", [*labels, "0.5"], broker.rtt.p50 * MICROSECONDS))
            out.append(("kafka_broker_rtt_seconds", [*labels, "0.99"], broker.rtt.p99 * MICROSECONDS))
            out.append(("kafka_broker_rtt_average_seconds", labels, broker.rtt.avg * MICROSECONDS))
    return out


class KafkaStatistics(Collector):
    """Exports the latest statistics of each service's librdkafka client."""

    def __init__(self) -> None:
        self._sources: dict[str, StatisticsSource] = {}
        self._decoded: dict[str, tuple[tuple[str, ...], Samples]] = {}

    def watch(self, service: str, source: StatisticsSource) -> None:
        """Export the statistics ``source`` returns (the latest JSON string, or None) as ``service``'s."""
        self._sources[service] = source

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = {family.name: family for family in self._families()}
        for service, source in self._sources.items():
            latest = source()
            raw = (latest,) if isinstance(latest, str) else tuple(latest or ())
            if not raw:
                continue
            cached = self._decoded.get(service)
            if cached is not None and len(cached[0]) == len(raw) and all(a is b for a, b in zip(cached[0], raw)):
                samples = cached[1]
            else:
                try:
                    samples = _samples(service, _merged([_decode(one) for one in raw]))
                except msgspec.DecodeError:
                    continue
                self._decoded[service] = (raw, samples)
            for name, labels, value in samples:
                family = families[name]
                family.add_metric(labels, value)  # type: ignore[attr-defined]
        return families.values()

    @staticmethod
    def _families() -> list[Metric]:
        return [
            (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help, labels=labels)
            for name, kind, help, labels in _FAMILIES
        ]
