"""Consumer lag as Prometheus metrics: the latest reading of :class:`app.kafka.lag.LagReader`.

``kafka_consumergroup_lag{group,topic,partition}`` is the records a group has yet to consume
(end offset minus committed offset), ``kafka_consumergroup_lag_seconds`` how long the oldest of
them has waited (now minus its timestamp: it grows between two readings, as the wait does), 0
for a partition the group has caught up with. The reading is taken every LAG_INTERVAL by
:func:`watch_consumer_lag`, in a child process (app/kafka/lag_process.py says why); scrapes only
read it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.kafka.errors import KafkaError
from app.kafka.lag import LagReading, PartitionLag
from app.kafka.lag_process import LagProcess

log = logging.getLogger(__name__)

LABELS = ["group", "topic", "partition"]


class ConsumerLag(Collector):
    """The gauges of the latest lag reading, and the count of rounds that failed."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.reading: LagReading | None = None
        self.failed_rounds = 0

    def update(self, reading: LagReading) -> None:
        self.reading = reading

    def fail(self) -> None:
        """A round that read nothing: the previous reading would pass for the present one, so none is shown."""
        self.reading = None
        self.failed_rounds += 1

    def partitions(self) -> list[PartitionLag]:
        return self.reading.partitions if self.reading is not None else []

    def age(self, partition: PartitionLag) -> float | None:
        """Seconds the partition's oldest unconsumed record has waited; 0 when there is none."""
        if partition.lag == 0:
            return 0.0
        if partition.oldest_timestamp is None:
            return None
        return max(0.0, self._clock() - partition.oldest_timestamp)

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        lag, seconds, failures = self._families()
        for partition in self.partitions():
            labels = [partition.group, partition.topic, str(partition.partition)]
            lag.add_metric(labels, partition.lag)
            age = self.age(partition)
            if age is not None:
                seconds.add_metric(labels, age)
        failures.add_metric([], self.failed_rounds)
        return [lag, seconds, failures]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "kafka_consumergroup_lag",
                "Records of a partition a consumer group has not consumed yet: end offset minus committed offset.",
                labels=LABELS,
            ),
            GaugeMetricFamily(
                "kafka_consumergroup_lag_seconds",
                "How long the oldest record a consumer group has not consumed has waited (its timestamp to now);"
                " 0 when the group is caught up.",
                labels=LABELS,
            ),
            CounterMetricFamily(
                "kafka_consumergroup_lag_errors",
                "Rounds of lag sampling that read nothing (Kafka unreachable, or no answer within LAG_TIMEOUT).",
                labels=[],
            ),
        )


async def watch_consumer_lag(
    reader: LagProcess,
    lag: ConsumerLag,
    *,
    interval: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read the lag every ``interval`` seconds into ``lag``, until cancelled."""
    last_error: str | None = None
    task_status.started()
    try:
        while True:
            try:
                reading = await reader.read()
            except KafkaError as error:
                lag.fail()
                if str(error) != last_error:  # once per distinct error, not at every round
                    log.warning("consumer lag not read (retrying every %.0fs): %s", interval, error)
                    last_error = str(error)
            else:
                if last_error is not None:
                    log.info("consumer lag read again")
                last_error = None
                lag.update(reading)
            await trio.sleep(interval)
    finally:
        await reader.aclose()  # shielded, within its own deadline
