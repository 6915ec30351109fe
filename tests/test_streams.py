"""The streams on the real broker: an acknowledgement turns ok only once Kafka has the records."""

from __future__ import annotations

import pytest
import trio

from app.core import NO_SPAN
from app.dialects.base import Decoded, Request
from app.events import LogIn
from app.observability.tracing import request_context
from app.runtime import Runtime
from app.shippers import application
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration


async def test_an_acknowledgement_is_settled_once_kafka_has_every_record(gateway: Runtime, kafka: KafkaReader) -> None:
    profile = gateway.profiles["application"]
    stream = application.stream(gateway.settings, profile)
    logs = [LogIn("acked", "INFO", f"m{i}") for i in range(5)]
    accepted = await stream.submit(
        Decoded(logs, acknowledge=True), Request("POST", "/", {}), request_context(None, None, None), NO_SPAN
    )
    acknowledgement = accepted.acknowledgement
    assert acknowledgement is not None and not acknowledgement.settled.is_set()
    with trio.fail_after(30):
        await acknowledgement.settled.wait()
    assert acknowledgement.ok and acknowledgement.delivered == 5
    records = await kafka.read(profile.topic, count=5, settle=0.5)
    assert sorted(r.headers["event-id"].decode() for r in records) == sorted(accepted.event_ids)


async def test_without_a_request_for_it_nothing_follows_the_records(gateway: Runtime) -> None:
    stream = application.stream(gateway.settings, gateway.profiles["application"])
    accepted = await stream.submit(
        Decoded([LogIn("plain", "INFO", "m")]), Request("POST", "/", {}), request_context(None, None, None), NO_SPAN
    )
    assert accepted.acknowledgement is None
