"""collectd's write_http plugin, ``Format "JSON"`` (``POST /collectd``): a JSON array of value lists.

A value list is ``{"values", "dstypes", "dsnames", "time", "interval", "host", "plugin",
"plugin_instance", "type", "type_instance", "meta"}``; each of its values becomes one metric event:

- ``metric``: named as collectd's own write_prometheus plugin names it,
  ``collectd_<plugin>_<type>_<dsname>_total``, where ``<plugin>_`` is left out when the plugin and
  the type have one name, ``_<dsname>`` when the data source is ``value``, and ``_total`` when it
  is no counter or derive (``collectd_load_shortterm``, ``collectd_memory``, and
  ``collectd_cpu_total`` for the cpu plugin's ``cpu`` type, a derive);
- ``labels``: ``plugin`` and ``type`` (the name alone cannot be split back into them),
  ``plugin_instance`` and ``type_instance`` when set, ``dstype`` (gauge, counter, derive, absolute)
  and ``interval`` (seconds, when set);
- ``host``: the value list's host (``unknown`` when empty); ``timestamp``: its ``time``;
  ``value``: the value as collectd sent it (a rate with ``StoreRates true``, else the raw counter).

A NaN is sent by collectd as ``null``: such a value is skipped and counted in
``gateway_ingest_skipped_values_total{dialect="collectd",reason="nan"}``. ``meta`` is read (its
text must be UTF-8) but kept out of the events.

Answers ``200 {"status": "accepted", "count": n, "eventIds": [...], "skipped": k}``: write_http
takes any 2xx but logs every other status than 200 (``LogHttpError``). Refusals are the native JSON
error; write_http does not retry, so a refused batch (429, 503 included) is lost to collectd and
counted by the gateway in ``gateway_ingest_events_total{outcome="refused"}``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final

import msgspec

from app import events
from app.core import Refusal
from app.dialects.base import (
    JSON,
    Accepted,
    Answer,
    Decoded,
    JSONDialect,
    Limits,
    Request,
    bearer_or_basic,
    ingest_operation,
    json_answer,
)

DSTYPES: Final = frozenset({"gauge", "counter", "derive", "absolute"})
_CUMULATIVE: Final = frozenset({"counter", "derive"})

Scalar = str | int | float | bool


class ValueList(msgspec.Struct, forbid_unknown_fields=True):
    """One value list as write_http's JSON format writes it (collectd's utils/format_json)."""

    values: list[float | None]
    dstypes: list[str]
    dsnames: list[str]
    time: float
    host: str
    plugin: Annotated[str, msgspec.Meta(min_length=1)]
    type: Annotated[str, msgspec.Meta(min_length=1)]
    interval: float = 0.0
    plugin_instance: str = ""
    type_instance: str = ""
    meta: dict[str, Scalar] | None = None


_decoder: Final = msgspec.json.Decoder(list[ValueList])


def metric_name(plugin: str, type_: str, dsname: str, dstype: str) -> str:
    """The metric of one value of a value list, as collectd's write_prometheus names it."""
    parts = ["collectd"]
    if plugin != type_:
        parts.append(plugin)
    parts.append(type_)
    if dsname != "value":
        parts.append(dsname)
    if dstype in _CUMULATIVE:
        parts.append("total")
    return "_".join(parts)


def _value_lists(body: bytes) -> list[ValueList]:
    try:
        return _decoder.decode(body)
    except RecursionError:
        raise Refusal(400, "malformed JSON", events.TOO_DEEP) from None
    except UnicodeDecodeError as error:
        raise Refusal(400, "malformed JSON", f"the JSON is not valid UTF-8: {error}") from None
    except msgspec.ValidationError as error:
        try:
            msgspec.json.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise Refusal(400, "malformed JSON", str(error)) from None
        raise Refusal(422, "invalid value list", str(error)) from None
    except msgspec.DecodeError as error:
        raise Refusal(400, "malformed JSON", str(error)) from None


def _invalid(index: int, message: str) -> Refusal:
    return Refusal(422, "invalid value list", [{"index": index, "message": message}])


def decode_value_lists(body: bytes, limits: Limits) -> Decoded:
    """The events of write_http's JSON body (raises Refusal: 400, 413, 422), all or nothing."""
    value_lists = _value_lists(body)
    count = sum(len(value_list.values) for value_list in value_lists)
    if count > limits.max_events:
        raise Refusal(413, "too many events", f"the body holds {count} values, at most {limits.max_events} are taken")
    samples: list[events.MetricIn] = []
    skipped = 0
    for index, value_list in enumerate(value_lists):
        width = len(value_list.values)
        if not (width == len(value_list.dstypes) == len(value_list.dsnames)):
            raise _invalid(index, "values, dstypes and dsnames must have one entry each per data source")
        try:
            timestamp = dt.datetime.fromtimestamp(value_list.time, dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise _invalid(index, f"time {value_list.time} is out of range") from None
        labels = {"plugin": value_list.plugin, "type": value_list.type}
        if value_list.plugin_instance:
            labels["plugin_instance"] = value_list.plugin_instance
        if value_list.type_instance:
            labels["type_instance"] = value_list.type_instance
        if value_list.interval > 0:
            labels["interval"] = f"{value_list.interval:g}"
        host = value_list.host or "unknown"
        for value, dstype, dsname in zip(value_list.values, value_list.dstypes, value_list.dsnames):
            if dstype not in DSTYPES:
                raise _invalid(index, f"dstype {dstype!r} is none of {', '.join(sorted(DSTYPES))}")
            if value is None:
                skipped += 1
                continue
            event = {
                "host": host,
                "metric": metric_name(value_list.plugin, value_list.type, dsname, dstype),
                "value": value,
                "labels": {**labels, "dstype": dstype},
                "timestamp": timestamp,
            }
            try:
                samples.append(msgspec.convert(event, events.MetricIn))
            except msgspec.ValidationError as error:
                raise _invalid(index, str(error)) from None
    return Decoded(samples, skipped={"nan": skipped} if skipped else {})


_VALUE_LIST_SCHEMA: Final = {
    "type": "object",
    "required": ["values", "dstypes", "dsnames", "time", "host", "plugin", "type"],
    "properties": {
        "values": {"type": "array", "items": {"type": ["number", "null"]}},
        "dstypes": {"type": "array", "items": {"type": "string", "enum": sorted(DSTYPES)}},
        "dsnames": {"type": "array", "items": {"type": "string"}},
        "time": {"type": "number"},
        "interval": {"type": "number"},
        **{name: {"type": "string"} for name in ("host", "plugin", "plugin_instance", "type", "type_instance")},
        "meta": {"type": "object"},
    },
}


_ANSWER_SCHEMA: Final = {
    "type": "object",
    "required": ["status", "count", "eventIds", "skipped"],
    "properties": {
        "status": {"type": "string"},
        "count": {"type": "integer"},
        "eventIds": {"type": "array", "items": {"type": "string"}},
        "skipped": {"type": "integer", "description": "null (NaN) values, which are no event"},
    },
}


class WriteHTTP(JSONDialect):
    """The write_http JSON route."""

    name = "collectd"
    media_types = frozenset({JSON})

    def authorization(self, request: Request) -> str | None:
        return bearer_or_basic(request)

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        return decode_value_lists(body, limits)

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        ids = accepted.event_ids
        payload = {"status": "accepted", "count": len(ids), "eventIds": ids, "skipped": sum(decoded.skipped.values())}
        return json_answer(payload, 200, accepted.headers)

    def operation(self) -> dict[str, Any]:
        operation = ingest_operation(
            "collectd write_http (Format JSON): one event per value of each value list",
            {JSON: {"schema": {"type": "array", "items": _VALUE_LIST_SCHEMA}}},
            "BatchAccepted",
        )
        responses = operation["post"]["responses"]
        del responses["202"]
        responses["200"] = {
            "description": "taken (write_http logs any other status)", "content": {JSON: {"schema": _ANSWER_SCHEMA}}
        }
        return operation


WRITE_HTTP = WriteHTTP()
