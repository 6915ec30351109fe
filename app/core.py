"""The project's core types: what every layer speaks, importing no adapter.

- :class:`Record`: one Kafka record as the gateway hands it to the producer;
- :class:`Outcome`: what a stream answers when it is handed a request's records;
- :class:`Refusal`: why a request is not taken, in the terms the dialects translate;
- :class:`DeliveryObserver` and :class:`Span`: what tracing sees of a request and of its records;
- :class:`Acknowledgement`: a submission followed until Kafka settled it, for protocols that ack.

The Kafka adapter (:mod:`app.kafka.producer`) fills a record's :class:`Tally` from librdkafka's
delivery reports; the profile applies them; tracing implements the observer and span
interfaces (:mod:`app.observability.otel`), and :data:`NO_SPAN` stands for them when it is off.
"""

from __future__ import annotations

import contextlib
import enum
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec
import trio

Headers = list[tuple[str, bytes]]


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    FULL = "full"
    UNAVAILABLE = "unavailable"
    CLOSED = "closed"


class Refusal(Exception):
    """A request (or a part of it) that is not taken: its status, a short error and a detail.

    Raised anywhere on the way from the body to the stream; the request's dialect answers it in
    its own terms (a JSON error, a ``google.rpc.Status``, a bulk item, a HEC code).
    """

    def __init__(self, status: int, error: str, detail: Any = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}

    def describe(self) -> str:
        """``error: detail`` as one line of text."""
        if self.detail is None:
            return self.error
        if isinstance(self.detail, str):
            return f"{self.error}: {self.detail}"
        return f"{self.error}: {msgspec.json.encode(self.detail).decode()}"


class DeliveryObserver(Protocol):
    """Follows the fate of one submission's records (tracing's ``deliver`` span), on the trio thread."""

    def delivered_to(self, dead_letter_topic: bool) -> None: ...

    def refused(self) -> None: ...

    def lose(self) -> None: ...

    def undelivered(self) -> None:
        """Kafka did not take the record in time; it is kept to be sent again (disk-mode streams)."""


class Acknowledgement:
    """Follows one submission's records until Kafka settled every one: what a protocol's ack
    (Splunk HEC's indexer acknowledgement, Fluentd forward's ``ack``) may wait for.

    ``settled`` is set once each record is delivered to its topic or has failed for good (dead
    lettered or lost); ``ok`` tells which. Records never settled (the process stopped first)
    leave it unset: an ack is never given for what Kafka did not take.
    """

    __slots__ = ("_pending", "delivered", "failed", "settled", "_next")

    def __init__(self, records: int, then: DeliveryObserver | None = None) -> None:
        self._pending = records
        self.delivered = 0
        self.failed = 0
        self.settled = trio.Event()
        self._next = then
        if not records:
            self.settled.set()

    @property
    def ok(self) -> bool:
        return self.settled.is_set() and self.failed == 0

    def delivered_to(self, dead_letter_topic: bool) -> None:
        if dead_letter_topic:
            self.failed += 1
        else:
            self.delivered += 1
        self._settle()
        if self._next is not None:
            self._next.delivered_to(dead_letter_topic)

    def refused(self) -> None:
        # A dead letter follows, which settles the record.
        if self._next is not None:
            self._next.refused()

    def lose(self) -> None:
        self.failed += 1
        self._settle()
        if self._next is not None:
            self._next.lose()

    def undelivered(self) -> None:
        pass  # sent again: its fate is still to come

    def _settle(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self.settled.set()


class Record(msgspec.Struct, gc=False):
    """One Kafka record as the gateway hands it to the producer.

    A record is its own delivery callback: confluent-kafka's delivery reports carry no headers
    (confluent-kafka-python #574), so the report must lead back to the record for a dead letter,
    and passing the record itself costs no allocation per produce call (a ``partial`` did). The
    callback adds the report to its topic's :class:`Tally` at once: a report queued for a later
    pass cost as much again as the callback.

    A ``msgspec.Struct`` left out of the cyclic collector (``gc=False``): made and freed in C, for
    less than the slotted dataclass it was (docs/benchmarks.md, "Building records, and the keep-alive timer"). It holds no
    cycle of its own; the one it joins on failure (its tally's ``failed`` list holds it) is broken
    when the producer collects the tally.
    """

    key: bytes
    value: bytes
    headers: Headers
    # Only while tracing: the submission whose ``deliver`` span this record's fate counts towards.
    settlement: DeliveryObserver | None = None
    # Set by the producer that takes the record: the tally its delivery report goes to, and how
    # long the record waited in the profile's buffer before (added to librdkafka's own latency).
    tally: Tally | None = None
    waited: float = 0.0

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value)

    def __call__(self, err: Any, msg: Any) -> None:
        # Runs inside the producer's poll()/flush(), in the thread that called it.
        tally = self.tally
        assert tally is not None, "produced by KafkaProducer.produce"
        if err is None:
            tally.delivered += 1
            tally.delivered_bytes += len(self.key) + len(self.value)
            latency = msg.latency()
            if latency is not None:
                tally.latencies.append(latency + self.waited)
            if self.settlement is not None:
                tally.traced.append(self.settlement)
        else:
            tally.failed.append((self, err))


@dataclass(slots=True)
class Tally:
    """The delivery reports of one topic of one producer since the previous collect.

    Filled by the records' callbacks inside ``poll``/``flush`` and emptied by the same call, so
    never by two threads at once: a profile polls and flushes one at a time.
    """

    topic: str
    delivered: int = 0
    delivered_bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    traced: list[DeliveryObserver] = field(default_factory=list)
    failed: list[tuple[Record, Any]] = field(default_factory=list)


class Sink(Protocol):
    """Where a stream's records go: a producer profile's bounded buffer."""

    name: str
    topic: str

    def submit(self, records: list[Record], size: int) -> Outcome: ...


class Span(Protocol):
    """The span of one request, as the pipeline and the streams use it."""

    def enqueue(self, sink: Sink, records: list[Record], size: int) -> Outcome:
        """``sink.submit(records, size)``, followed (when traced) until the records are delivered."""

    def child(self, name: str, events: int) -> contextlib.AbstractContextManager[None]:
        """A span below the request's around one step (an outbox commit, a forward)."""

    def end(self, status: int) -> None: ...


class _NoSpan:
    """The span of every request while tracing is off: it does the work and records nothing."""

    __slots__ = ()

    def enqueue(self, sink: Sink, records: list[Record], size: int) -> Outcome:
        return sink.submit(records, size)

    def child(self, name: str, events: int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def end(self, status: int) -> None:
        pass


NO_SPAN: Final[Span] = _NoSpan()


class Tracer(Protocol):
    """Makes the span of each request (tracing on), or :data:`NO_SPAN` (tracing off)."""

    def start_request(self, name: str, route: str, listener: str, trace: Any) -> Span: ...

    def shutdown(self) -> None:
        """Export what is queued and stop. Blocking: call it in a worker thread."""


class NoTracer:
    __slots__ = ()

    def start_request(self, name: str, route: str, listener: str, trace: Any) -> Span:
        return NO_SPAN

    def shutdown(self) -> None:
        pass


_key: Final = operator.attrgetter("key")
_value: Final = operator.attrgetter("value")


def sized(records: Sequence[Record]) -> int:
    """The bytes a stream's bound counts for ``records``: keys and values (summed in C)."""
    return sum(map(len, map(_key, records))) + sum(value_lengths(records))


def value_lengths(records: Sequence[Record]) -> list[int]:
    """The length of each record's value (measured in C)."""
    return list(map(len, map(_value, records)))

