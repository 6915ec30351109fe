import uuid

from app.observability.tracing import continue_trace, request_context


def test_a_valid_traceparent_keeps_trace_id_and_flags_with_a_new_span() -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ctx = continue_trace(incoming, "vendor=x")
    assert ctx.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ctx.flags == "01"
    assert ctx.span_id != "00f067aa0ba902b7" and len(ctx.span_id) == 16
    assert ctx.traceparent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert dict(ctx.kafka_headers()) == {"traceparent": ctx.traceparent.encode(), "tracestate": b"vendor=x"}


def test_invalid_or_missing_traceparent_starts_a_new_trace() -> None:
    for bad in [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ]:
        ctx = continue_trace(bad, "vendor=x")
        assert len(ctx.trace_id) == 32 and ctx.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
        assert ctx.tracestate is None


def test_a_usable_request_id_is_kept_and_written_to_kafka() -> None:
    ctx = request_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None, "req-42")
    assert ctx.request_id == "req-42"
    assert ctx.parent_span_id == "00f067aa0ba902b7"
    assert dict(ctx.kafka_headers())["x-request-id"] == b"req-42"


def test_a_missing_or_unusable_request_id_is_replaced_by_a_new_uuid() -> None:
    for bad in [None, "", "has space", "x" * 129, "caf\u00e9"]:
        ctx = request_context(None, None, bad)
        assert ctx.request_id is not None and str(uuid.UUID(ctx.request_id)) == ctx.request_id
        assert ctx.parent_span_id is None
