"""The submission with backpressure, against a stream that refuses: the same batch again, never halved."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from app import events
from app.admission import Admission
from app.core import NoTracer, Refusal, Span
from app.dialects.base import Accepted, Decoded, Request
from app.observability.metrics import Metrics
from app.observability.tracing import TraceContext
from app.sockets.server import BACKOFF_MAX, Submitter


class RefusingStream:
    name = "application"

    def __init__(self, refusals: list[Refusal]) -> None:
        self.refusals = refusals
        self.batches: list[list[str]] = []
        self.times: list[float] = []

    def check(self, request: Request) -> None:
        pass

    async def submit(self, decoded: Decoded, request: Request, trace: TraceContext, span: Span) -> Accepted:
        self.batches.append([event.message for event in decoded.events])
        self.times.append(trio.current_time())
        if self.refusals:
            raise self.refusals.pop(0)
        return Accepted([str(i) for i in range(len(decoded.events))])


def submitter(stream: RefusingStream, dropped: list[tuple[str, int]], max_batch: int = 100) -> Submitter:
    metrics = Metrics()
    admission = Admission("application", metrics, rate_limit=0, burst=1, api_keys=None, clock=trio.current_time)
    return Submitter(
        "syslog-tcp", "syslog", stream, admission, metrics, NoTracer(), max_batch=max_batch,
        dropped=lambda reason, count: dropped.append((reason, count)),
    )


def logs(count: int) -> list[events.LogIn]:
    return [events.LogIn(source="s", level="INFO", message=f"m{i}") for i in range(count)]


def full() -> Refusal:
    return Refusal(503, "buffer full", "full", headers={"Retry-After": "1"})


async def test_a_refusing_stream_is_waited_out_with_the_same_batch_and_a_bounded_backoff(autojump_clock: Any) -> None:
    unavailable = [Refusal(503, "kafka unavailable", "breaker open") for _ in range(6)]
    stream = RefusingStream([full(), full(), *unavailable, Refusal(429, "rate limited")])
    dropped: list[tuple[str, int]] = []
    accepted = await submitter(stream, dropped).submit(logs(5))
    assert len(accepted) == 1 and len(accepted[0].event_ids) == 5
    assert stream.batches == [[f"m{i}" for i in range(5)]] * 10
    waits = [b - a for a, b in zip(stream.times, stream.times[1:])]
    assert waits[0] == pytest.approx(0.05) and max(waits) == pytest.approx(BACKOFF_MAX)
    assert dropped == []


async def test_without_waiting_a_refusal_is_handed_back() -> None:
    stream = RefusingStream([full()])
    with pytest.raises(Refusal):
        await submitter(stream, []).submit(logs(3), wait=False)


async def test_events_over_the_size_limit_are_dropped_and_counted_and_the_rest_taken() -> None:
    stream = RefusingStream([Refusal(413, "event too large", [{"index": 1, "message": "big"}])])
    dropped: list[tuple[str, int]] = []
    await submitter(stream, dropped).submit(logs(3))
    assert stream.batches == [["m0", "m1", "m2"], ["m0", "m2"]]
    assert dropped == [("too_large", 1)]


async def test_a_large_batch_goes_in_slices_of_the_batch_limit() -> None:
    stream = RefusingStream([])
    accepted = await submitter(stream, [], max_batch=4).submit(logs(10))
    assert [len(batch) for batch in stream.batches] == [4, 4, 2] and len(accepted) == 3


class BoundedStream(RefusingStream):
    """A buffer that holds at most ``room`` events: a larger batch is refused as full, always."""

    def __init__(self, room: int) -> None:
        super().__init__([])
        self.room = room

    async def submit(self, decoded: Decoded, request: Request, trace: TraceContext, span: Span) -> Accepted:
        self.batches.append([event.message for event in decoded.events])
        if len(decoded.events) > self.room:
            raise full()
        return Accepted([event.message for event in decoded.events])


async def test_a_slice_larger_than_the_buffer_is_split_until_it_fits(autojump_clock: Any) -> None:
    stream = BoundedStream(room=3)
    accepted = await submitter(stream, []).submit(logs(10))
    assert [id for taken in accepted for id in taken.event_ids] == [f"m{i}" for i in range(10)]  # all, in order, once
    assert all(len(batch) <= 3 for batch in stream.batches if batch in [a.event_ids for a in accepted])
