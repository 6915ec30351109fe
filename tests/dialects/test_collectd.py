"""The collectd write_http JSON decoder, sans-IO: bytes in, events or a Refusal out, never anything else."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import events
from app.core import Refusal
from app.dialects.base import Accepted, Limits, Request
from app.dialects.collectd import WRITE_HTTP, decode_value_lists, metric_name

LIMITS = Limits(max_events=10_000)

# As collectd 5.12's write_http writes them (utils/format_json), one per data source kind.
LOAD = {
    "values": [0.12, 0.34, None], "dstypes": ["gauge", "gauge", "gauge"],
    "dsnames": ["shortterm", "midterm", "longterm"],
    "time": 1764064800.123, "interval": 10.0, "host": "web-1", "plugin": "load", "plugin_instance": "",
    "type": "load", "type_instance": "",
}
CPU = {
    "values": [123456], "dstypes": ["derive"], "dsnames": ["value"], "time": 1764064800.5, "interval": 1.0,
    "host": "web-1", "plugin": "cpu", "plugin_instance": "0", "type": "cpu", "type_instance": "user",
    "meta": {"network:received": True, "k": "v", "n": -3},
}
IF_OCTETS = {
    "values": [18446744073709551615, 7], "dstypes": ["counter", "counter"], "dsnames": ["rx", "tx"], "time": 1.5,
    "interval": 0.5, "host": "", "plugin": "interface", "plugin_instance": "eth0", "type": "if_octets",
    "type_instance": "",
}


def body(*value_lists: dict[str, Any]) -> bytes:
    return json.dumps(list(value_lists)).encode()


def test_each_value_is_an_event_named_as_write_prometheus_names_it() -> None:
    decoded = decode_value_lists(body(LOAD, CPU, IF_OCTETS), LIMITS)
    shortterm, midterm, cpu, rx, tx = decoded.events
    assert shortterm == events.MetricIn(
        "web-1", "collectd_load_shortterm", 0.12, "",
        {"plugin": "load", "type": "load", "dstype": "gauge", "interval": "10"},
        dt.datetime(2025, 11, 25, 10, 0, 0, 123_000, tzinfo=dt.timezone.utc),
    )
    assert midterm.metric == "collectd_load_midterm" and midterm.value == 0.34
    assert cpu.metric == "collectd_cpu_total" and cpu.value == 123456
    assert cpu.labels == {
        "plugin": "cpu", "type": "cpu", "plugin_instance": "0", "type_instance": "user", "dstype": "derive",
        "interval": "1",
    }
    assert (rx.metric, tx.metric) == ("collectd_interface_if_octets_rx_total", "collectd_interface_if_octets_tx_total")
    assert rx.host == "unknown" and rx.value == 18446744073709551615.0 and rx.labels["interval"] == "0.5"
    assert decoded.skipped == {"nan": 1}  # the load's longterm, sent as null


@pytest.mark.parametrize(
    ("plugin", "type_", "dsname", "dstype", "name"),
    [
        ("memory", "memory", "value", "gauge", "collectd_memory"),
        ("df", "df_complex", "value", "gauge", "collectd_df_df_complex"),
        ("disk", "disk_octets", "read", "derive", "collectd_disk_disk_octets_read_total"),
        ("swap", "swap_io", "value", "absolute", "collectd_swap_swap_io"),
    ],
)
def test_metric_names(plugin: str, type_: str, dsname: str, dstype: str, name: str) -> None:
    assert metric_name(plugin, type_, dsname, dstype) == name


def test_an_empty_array_holds_no_event() -> None:
    decoded = decode_value_lists(b"[]", LIMITS)
    assert decoded.events == [] and decoded.skipped == {}


@pytest.mark.parametrize(
    ("document", "status", "why"),
    [
        (b"[{", 400, "malformed"),
        (b'[{"values": [1e999]}]', 400, "out of range"),
        (json.dumps([{**LOAD, "values": [1, 2]}]).encode(), 422, "one entry each"),
        (json.dumps([{**LOAD, "dstypes": ["gauge", "gauge", "rate"]}]).encode(), 422, "dstype 'rate'"),
        (json.dumps([{**LOAD, "time": 1e20}]).encode(), 422, "out of range"),
        (json.dumps([{**LOAD, "plugin": ""}]).encode(), 422, "length >= 1"),
        (json.dumps([{**LOAD, "host": "h" * 256}]).encode(), 422, "length <= 255"),
        (json.dumps([{**LOAD, "type_instance": "t" * 1025}]).encode(), 422, "length <= 1024"),
        (json.dumps([{**LOAD, "extra": 1}]).encode(), 422, "unknown field"),
        (json.dumps([{**LOAD, "meta": {"a": [1]}}]).encode(), 422, "meta"),
        (json.dumps({"values": []}).encode(), 422, "array"),
        (b'[{"host": "\xff\xfe"}]', 400, "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "malformed"),
        (b'[{"values": [1], "meta": {"k": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}]", 400, "malformed"),
    ],
)
def test_a_body_that_is_no_value_list_array_is_refused(document: bytes, status: int, why: str) -> None:
    with pytest.raises(Refusal) as refused:
        decode_value_lists(document, LIMITS)
    assert refused.value.status == status, refused.value.describe()
    assert why in refused.value.describe()


def test_more_values_than_max_events_is_a_413() -> None:
    with pytest.raises(Refusal) as refused:
        decode_value_lists(body(LOAD, LOAD), Limits(max_events=5))
    assert refused.value.status == 413


def test_the_answer_is_200_with_the_event_ids_and_the_skipped_count() -> None:
    decoded = decode_value_lists(body(LOAD), LIMITS)
    answer = WRITE_HTTP.answer(decoded, Accepted(["a", "b"]), Request("POST", "/collectd", {}))
    assert answer.status == 200
    assert json.loads(answer.body) == {"status": "accepted", "count": 2, "eventIds": ["a", "b"], "skipped": 1}
    refusal = Refusal(429, "rate limited", headers={"Retry-After": "1"})
    refused = WRITE_HTTP.refuse(refusal, Request("POST", "/collectd", {}))
    assert refused.status == 429 and json.loads(refused.body) == {"error": "rate limited"}


def test_credentials_come_from_a_bearer_header_or_user_and_password() -> None:
    basic = Request("POST", "/collectd", {"authorization": "Basic Z2F0ZXdheTprZXk="})  # gateway:key
    assert WRITE_HTTP.authorization(basic) == "Bearer key"
    assert WRITE_HTTP.authorization(Request("POST", "/collectd", {"authorization": "Bearer key"})) == "Bearer key"


# -- hypothesis: whatever the bytes, Decoded or Refusal ----------------------------------------

names = st.text(max_size=8) | st.sampled_from(["load", "cpu", "value", ""])
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**64), 2**64) | st.none()
value_lists = st.fixed_dictionaries(
    {
        "values": st.lists(numbers, max_size=3),
        "dstypes": st.lists(st.sampled_from(["gauge", "counter", "derive", "absolute", "x"]), max_size=3),
        "dsnames": st.lists(names, max_size=3),
        "time": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70),
        "host": names,
        "plugin": names,
        "type": names,
    },
    optional={
        "interval": st.floats(allow_nan=False, allow_infinity=False),
        "plugin_instance": names,
        "type_instance": names,
        "meta": st.dictionaries(
            names, st.text(max_size=4) | st.integers() | st.booleans() | st.lists(st.none(), max_size=1)
        ),
        "other": st.none(),
    },
)
aligned = st.integers(1, 3).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "values": st.lists(numbers, min_size=n, max_size=n),
            "dstypes": st.lists(st.sampled_from(["gauge", "counter", "derive", "absolute"]), min_size=n, max_size=n),
            "dsnames": st.lists(names, min_size=n, max_size=n),
            "time": st.floats(0, 4e9),
            "interval": st.floats(0, 100),
            "host": names,
            "plugin": st.sampled_from(["load", "cpu"]),
            "type": st.sampled_from(["load", "cpu", "if_octets"]),
        }
    )
)
documents = st.lists(value_lists | aligned, max_size=4).map(lambda v: json.dumps(v).encode())


def _decode(document: bytes) -> None:
    try:
        decoded = decode_value_lists(document, Limits(max_events=8))
    except Refusal as refusal:
        assert refusal.status in (400, 413, 422)
        return
    for event in decoded.events:
        assert isinstance(event, events.MetricIn) and math.isfinite(event.value)
        assert event.metric.startswith("collectd_")
        assert event.timestamp is not None and event.timestamp.tzinfo is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents | st.binary(max_size=200))
def test_any_body_is_events_or_a_refusal(document: bytes) -> None:
    _decode(document)


@settings(max_examples=100, deadline=None)
@given(document=documents, data=st.data())
def test_a_truncated_or_spoiled_body_is_events_or_a_refusal(document: bytes, data: st.DataObject) -> None:
    _decode(document[: data.draw(st.integers(0, len(document)))])
    at = data.draw(st.integers(0, len(document) - 1))
    _decode(document[:at] + bytes([data.draw(st.integers(0, 255))]) + document[at + 1 :])
