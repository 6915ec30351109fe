"""Consumer lag of the groups that read the gateway's topics: their committed offsets against the
partitions' end offsets, and the timestamp of the first record each group has not consumed.

The adapter around confluent-kafka's AdminClient (``list_consumer_groups``,
``list_consumer_group_offsets``, ``list_offsets``) and a consumer that only reads one record
here and there (it never joins a group nor commits). Blocking: :meth:`LagReader.read` runs in a
worker thread. Its cost is bounded on a cluster of many groups: at most ``max_groups`` groups are
asked per round (the groups known to read the topics first, then the others in turn, so that a new
reader is found within a few rounds), every request shares one deadline, and a record's timestamp
is read once per committed offset (a group that does not move costs nothing more).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
from collections.abc import Collection, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from app.config import Settings
from app.kafka.connection import connection_config
from app.kafka.errors import KafkaConfigError, KafkaUnavailable

log = logging.getLogger(__name__)

# Most distinct (partition, offset) records whose timestamp one round reads.
MAX_TIMESTAMP_READS = 256


@dataclass(frozen=True)
class PartitionLag:
    """One group's position in one partition of a watched topic."""

    group: str
    topic: str
    partition: int
    committed: int
    end: int
    # Seconds since the epoch of the first record the group has not consumed (None: none, or unknown).
    oldest_timestamp: float | None = None

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


@dataclass(frozen=True)
class LagReading:
    partitions: list[PartitionLag]
    groups_asked: int  # this round
    groups_known: int  # listed on the cluster (or configured)
    failures: int  # groups whose offsets could not be read this round


def _error(error: confluent_kafka.KafkaException) -> str:
    first = error.args[0] if error.args else None
    return first.str() if isinstance(first, confluent_kafka.KafkaError) else str(error)


class LagReader:
    """Reads the lag of the groups on ``topics``; ``groups`` empty: every group of the cluster."""

    def __init__(
        self,
        connection: dict[str, Any],
        *,
        topics: Collection[str],
        groups: Collection[str] = (),
        max_groups: int = 100,
        timeout: float = 5.0,
        client_id: str = "kafka-log-gateway",
    ) -> None:
        self._connection = dict(connection)
        self.topics = frozenset(topics)
        self._configured = sorted(set(groups))
        self._max_groups = max_groups
        self._timeout = timeout
        self._client_id = client_id
        self._admin: AdminClient | None = None
        self._consumer: confluent_kafka.Consumer | None = None
        self._readers: set[str] = set()  # groups seen with offsets on the topics
        self._last_asked = ""  # where the next round goes on through the other groups
        self._timestamps: dict[tuple[str, int, int], float | None] = {}
        self._lock = threading.Lock()  # one read at a time; close waits for it

    # -- the round ------------------------------------------------------------------------------

    def read(self) -> LagReading:
        """One round. Raises KafkaUnavailable when the cluster does not answer, KafkaConfigError
        when the clients refuse their configuration."""
        with self._lock:
            deadline = time.monotonic() + self._timeout
            admin = self._admin_client()
            known = self._configured or self._list_groups(admin, deadline)
            asked = self.choose(known)
            committed, failures = self._committed(admin, asked, deadline)
            if asked and failures == len(asked):
                raise KafkaUnavailable(f"the offsets of none of {len(asked)} consumer groups could be read")
            self._readers = (self._readers - set(asked)) | {group for group, _, _ in committed}
            ends = self._end_offsets(admin, {(topic, partition) for _, topic, partition in committed}, deadline)
            positions = [
                PartitionLag(group, topic, partition, offset, ends[topic, partition])
                for (group, topic, partition), offset in sorted(committed.items())
                if (topic, partition) in ends
            ]
            lagging = {(p.topic, p.partition, p.committed) for p in positions if p.lag > 0}
            timestamps = self._read_timestamps(lagging, deadline)
            positions = [
                dataclasses.replace(p, oldest_timestamp=timestamps.get((p.topic, p.partition, p.committed)))
                if p.lag > 0 else p
                for p in positions
            ]
            return LagReading(positions, len(asked), len(known), failures)

    def choose(self, known: list[str]) -> list[str]:
        """The groups of this round: the known readers, then the others in turn, ``max_groups`` in all."""
        readers = [group for group in known if group in self._readers]
        others = [group for group in known if group not in self._readers]
        room = max(0, self._max_groups - len(readers))
        # On from the last group asked, by name: groups that come and go do not make the turn skip any.
        start = bisect.bisect_right(others, self._last_asked)
        chosen = (others[start:] + others[:start])[:room]
        if chosen:
            self._last_asked = chosen[-1]
        return sorted(readers[: self._max_groups] + chosen)

    # -- the requests -----------------------------------------------------------------------------

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            config = {
                **self._connection,
                "client.id": f"{self._client_id}-lag",
                "socket.timeout.ms": max(1000, int(self._timeout * 1000)),
                "logger": logging.getLogger("librdkafka"),
            }
            try:
                self._admin = AdminClient(config)
            except (confluent_kafka.KafkaException, ValueError, TypeError) as error:
                raise KafkaConfigError(f"lag admin client: {error}") from None
        return self._admin

    @staticmethod
    def _remaining(deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaUnavailable("no answer within LAG_TIMEOUT")
        return remaining

    def _list_groups(self, admin: AdminClient, deadline: float) -> list[str]:
        try:
            result = admin.list_consumer_groups(request_timeout=self._remaining(deadline)).result(
                timeout=self._remaining(deadline)
            )
        except confluent_kafka.KafkaException as error:
            raise KafkaUnavailable(f"listing consumer groups: {_error(error)}") from None
        except TimeoutError:
            raise KafkaUnavailable("listing consumer groups: no answer within LAG_TIMEOUT") from None
        if result.errors and not result.valid:
            raise KafkaUnavailable(f"listing consumer groups: {result.errors[0].str()}")
        return sorted(
            listing.group_id for listing in result.valid if listing.state != confluent_kafka.ConsumerGroupState.DEAD
        )

    def _committed(
        self, admin: AdminClient, groups: list[str], deadline: float
    ) -> tuple[dict[tuple[str, str, int], int], int]:
        """Each group's committed offset on each partition of the topics, and how many groups failed."""
        futures: dict[str, Future[Any]] = {}
        failures = 0
        for group in groups:
            try:
                futures.update(
                    admin.list_consumer_group_offsets(
                        [ConsumerGroupTopicPartitions(group)], request_timeout=self._remaining(deadline)
                    )
                )
            except (confluent_kafka.KafkaException, ValueError, TypeError) as error:
                log.debug("offsets of group %s not asked: %s", group, error)
                failures += 1
        committed: dict[tuple[str, str, int], int] = {}
        for group, future in futures.items():
            try:
                result = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except (confluent_kafka.KafkaException, TimeoutError) as error:
                # A group deleted meanwhile, a coordinator moving, an ACL: the others still count.
                log.debug("offsets of group %s not read: %s", group, error)
                failures += 1
                continue
            for tp in result.topic_partitions or ():
                if tp.topic in self.topics and tp.offset >= 0 and tp.error is None:
                    committed[group, tp.topic, tp.partition] = tp.offset
        return committed, failures

    def _end_offsets(
        self, admin: AdminClient, partitions: Iterable[tuple[str, int]], deadline: float
    ) -> dict[tuple[str, int], int]:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        wanted = {TopicPartition(topic, partition): latest for topic, partition in partitions}
        if not wanted:
            return {}
        try:
            futures = admin.list_offsets(
                wanted, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=self._remaining(deadline)
            )
        except confluent_kafka.KafkaException as error:
            raise KafkaUnavailable(f"end offsets: {_error(error)}") from None
        ends: dict[tuple[str, int], int] = {}
        for tp, future in futures.items():
            try:
                ends[tp.topic, tp.partition] = future.result(timeout=max(0.0, deadline - time.monotonic())).offset
            except (confluent_kafka.KafkaException, TimeoutError) as error:
                log.debug("end offset of %s[%d] not read: %s", tp.topic, tp.partition, error)
        if wanted and not ends:
            raise KafkaUnavailable("end offsets: no partition answered within LAG_TIMEOUT")
        return ends

    def _consumer_client(self) -> confluent_kafka.Consumer:
        if self._consumer is None:
            config = {
                **self._connection,
                "client.id": f"{self._client_id}-lag",
                # Required by librdkafka; never joined nor committed to: records are read by assignment.
                "group.id": f"{self._client_id}-lag-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",  # a committed offset deleted by retention: the oldest record left
                "fetch.wait.max.ms": 50,
                "max.partition.fetch.bytes": 64 * 1024,
                "queued.max.messages.kbytes": 1024,  # no read-ahead beyond the first records
                "socket.timeout.ms": max(1000, int(self._timeout * 1000)),
                "logger": logging.getLogger("librdkafka"),
            }
            try:
                self._consumer = confluent_kafka.Consumer(config)
            except (confluent_kafka.KafkaException, ValueError, TypeError) as error:
                raise KafkaConfigError(f"lag consumer: {error}") from None
        return self._consumer

    def _read_timestamps(
        self, wanted: set[tuple[str, int, int]], deadline: float
    ) -> dict[tuple[str, int, int], float | None]:
        """The timestamp of the record at each (topic, partition, offset): from the last round when it was
        read already, else read now, one offset per partition at a time, within the deadline."""
        found = {key: self._timestamps[key] for key in wanted if key in self._timestamps}
        pending = sorted(wanted - set(found))[:MAX_TIMESTAMP_READS]
        try:
            while pending and time.monotonic() < deadline:
                batch: dict[tuple[str, int], int] = {}
                for topic, partition, offset in pending:
                    batch.setdefault((topic, partition), offset)
                found.update(self._read_batch(batch, deadline))
                pending = [key for key in pending if (key[0], key[1]) not in batch]
        except confluent_kafka.KafkaException as error:
            log.debug("record timestamps not read: %s", _error(error))
        self._timestamps = dict(found)  # only what this round needs: the cache stays as small as the groups
        return found

    def _read_batch(
        self, batch: dict[tuple[str, int], int], deadline: float
    ) -> dict[tuple[str, int, int], float | None]:
        consumer = self._consumer_client()
        consumer.assign([TopicPartition(topic, partition, offset) for (topic, partition), offset in batch.items()])
        read: dict[tuple[str, int, int], float | None] = {}
        try:
            while len(read) < len(batch):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for message in consumer.consume(num_messages=len(batch), timeout=min(remaining, 0.5)):
                    if message.error() is not None:
                        continue
                    topic, partition = str(message.topic()), int(message.partition() or 0)
                    offset = batch.get((topic, partition))
                    if offset is None or (topic, partition, offset) in read:
                        continue  # the partition's next records: its first one said it all
                    kind, milliseconds = message.timestamp()
                    # A record past the offset: the one at it was a transaction marker or is gone.
                    unknown = kind == confluent_kafka.TIMESTAMP_NOT_AVAILABLE
                    read[topic, partition, offset] = None if unknown else milliseconds / 1000
        finally:
            consumer.unassign()
        return read

    def close(self) -> None:
        """Close the clients (waits for a round in progress)."""
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            self._admin = None


def lag_topics(settings: Settings) -> list[str]:
    """The topics whose readers' lag the gateway watches: every stream's, and the dead-letter topics."""
    return [
        settings.application.topic,
        settings.application.dead_letter_topic,
        settings.infrastructure.topic,
        settings.infrastructure.dead_letter_topic,
        settings.transaction.topic,
    ]

