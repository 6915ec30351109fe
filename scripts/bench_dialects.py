"""The bodies ``make bench`` sends in the wire formats of the gateway's dialects, and the socket and
gRPC load it drives the socket and OTLP/gRPC listeners with.

Every body is built with the library the gateway decodes it with (protobuf messages of
app/proto/ compressed with cramjam's snappy, msgspec's JSON and msgpack), from the bench's log
events, so each dialect row carries the same messages as the native batch row beside it. Syslog
frames are the one exception: the gateway's syslog parser is its own, so its frames are written
here as RFC 5424 spells them.

The loads run in threads of the bench process (sockets and grpcio release the GIL while they
wait), so the server's CPU is all the server's own: :class:`StreamLoad` writes pre-built bytes on
a few connections as fast as the listener reads them (syslog, forward without acks: what was
taken is counted from the gateway's metrics), :class:`AckedForwardLoad` sends forward chunks with
``option.chunk`` and waits for each one's ack, :class:`GrpcLoad` calls ``LogsService/Export``.
Both of those record every completion, so a step counts what completed within its window.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cramjam
import grpc
import msgspec
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from app.proto.loki.push_pb2 import EntryAdapter, PushRequest, StreamAdapter
from app.proto.prometheus.remote_pb2 import WriteRequest
from app.proto.prometheus.types_pb2 import Label, Sample, TimeSeries

# When the bench's events happened: 2025-11-25T10:00:00Z, a millisecond apart.
START = dt.datetime(2025, 11, 25, 10, 0, tzinfo=dt.timezone.utc)
START_NS = int(START.timestamp()) * 1_000_000_000
HOSTS = 5
SYSLOG_SEVERITIES = {"FATAL": 2, "ERROR": 3, "WARN": 4, "INFO": 6, "DEBUG": 7}
LOCAL0 = 16
FORWARD_TAG = "kube.var.log.containers.checkout"
_json = msgspec.json.Encoder().encode
_msgpack = msgspec.msgpack.Encoder().encode

LogEvent = dict[str, Any]  # source, level, message: what scripts/bench.py's log_event makes


def _host(i: int) -> str:
    return f"web-{i % HOSTS}"


def _nanoseconds(i: int) -> int:
    return START_NS + i * 1_000_000


def _iso(i: int) -> str:
    return (START + dt.timedelta(milliseconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- HTTP bodies --------------------------------------------------------------------------------


def remote_write_body(samples: int) -> bytes:
    """A Prometheus remote_write 1.0 request: a ``WriteRequest`` of ``samples`` node-exporter
    series with one sample each (as a shard sends them), snappy block compressed."""
    series = []
    modes = ("user", "system", "idle", "iowait", "irq", "softirq", "steal", "nice")
    for i in range(samples):
        n = i // (HOSTS * 4)
        kind = i // HOSTS % 4
        if kind == 0:
            name, extra = "node_cpu_seconds_total", {"cpu": str(n % 16), "mode": modes[n // 16 % len(modes)]}
        elif kind == 1:
            name, extra = "node_network_receive_bytes_total", {"device": f"eth{n}"}
        elif kind == 2:
            name = "node_filesystem_avail_bytes"
            extra = {"device": f"/dev/vd{n}", "fstype": "ext4", "mountpoint": f"/d{n}"}
        else:
            name, extra = "node_memory_MemAvailable_bytes", {"numa": str(n)}
        labels = {"__name__": name, "instance": f"{_host(i)}:9100", "job": "node", **extra}
        series.append(TimeSeries(
            # Prometheus sends a series' labels sorted by name.
            labels=[Label(name=key, value=value) for key, value in sorted(labels.items())],
            samples=[Sample(value=1.5e9 + i * 17.25, timestamp=_nanoseconds(i) // 1_000_000)],
        ))
    return bytes(cramjam.snappy.compress_raw(WriteRequest(timeseries=series).SerializeToString()))


def es_bulk_body(events: Sequence[LogEvent]) -> bytes:
    """An Elasticsearch ``_bulk`` request as Filebeat and elasticsearch-py's ``helpers.bulk`` write
    it into a data stream: a ``create`` action line and an ECS document line per event."""
    lines = []
    for i, event in enumerate(events):
        lines.append(_json({"create": {"_index": f"logs-{event['source']}-default"}}))
        lines.append(_json({
            "@timestamp": _iso(i),
            "message": event["message"],
            "log": {"level": event["level"].lower()},
            "host": {"name": _host(i)},
            "service": {"name": event["source"]},
        }))
    return b"\n".join(lines) + b"\n"


def hec_body(events: Sequence[LogEvent]) -> bytes:
    """A Splunk HEC ``/services/collector/event`` batch: event objects one after the other, with
    their epoch time, host, source, sourcetype and index, as Splunk's logging libraries batch them."""
    return b"".join(
        _json({
            "time": _nanoseconds(i) / 1e9,
            "host": _host(i),
            "source": event["source"],
            "sourcetype": "_json",
            "index": "main",
            "event": {"message": event["message"], "level": event["level"]},
        })
        for i, event in enumerate(events)
    )


def _loki_streams(events: Sequence[LogEvent]) -> dict[tuple[str, str], list[tuple[int, str]]]:
    """The events by Loki stream (app and level labels, as Promtail's pipelines set them), in order."""
    streams: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for i, event in enumerate(events):
        streams.setdefault((event["source"], event["level"].lower()), []).append((_nanoseconds(i), event["message"]))
    return streams


def loki_protobuf_body(events: Sequence[LogEvent]) -> bytes:
    """A Loki push as Promtail and Grafana Alloy send it: a ``logproto.PushRequest``, one stream per
    label set, as a snappy block without a Content-Encoding header."""
    streams = []
    for (app, level), entries in _loki_streams(events).items():
        adapters = []
        for nanoseconds, line in entries:
            entry = EntryAdapter(line=line)
            entry.timestamp.FromNanoseconds(nanoseconds)
            adapters.append(entry)
        streams.append(StreamAdapter(labels=f'{{app="{app}", env="prod", level="{level}"}}', entries=adapters))
    return bytes(cramjam.snappy.compress_raw(PushRequest(streams=streams).SerializeToString()))


def loki_json_body(events: Sequence[LogEvent]) -> bytes:
    """The same push in Loki's JSON encoding (python-logging-loki's, and Loki's HTTP API examples')."""
    return _json({"streams": [
        {"stream": {"app": app, "env": "prod", "level": level}, "values": [[str(ns), line] for ns, line in entries]}
        for (app, level), entries in _loki_streams(events).items()
    ]})


# collectd value lists as its read plugins make them: (plugin, plugin_instance, type, type_instance, dsnames, dstypes)
_COLLECTD_LISTS = (
    ("load", "", "load", "", ("shortterm", "midterm", "longterm"), ("gauge", "gauge", "gauge")),
    ("cpu", "0", "cpu", "user", ("value",), ("derive",)),
    ("interface", "eth0", "if_octets", "", ("rx", "tx"), ("derive", "derive")),
    ("memory", "", "memory", "used", ("value",), ("gauge",)),
    ("df", "root", "df_complex", "free", ("value",), ("gauge",)),
    ("disk", "vda", "disk_ops", "", ("read", "write"), ("derive", "derive")),
)


def collectd_body(values: int) -> bytes:
    """collectd write_http's ``Format "JSON"``: an array of value lists whose values total ``values``."""
    lists = []
    total = 0
    i = 0
    while total < values:
        plugin, plugin_instance, type_, type_instance, dsnames, dstypes = _COLLECTD_LISTS[i % len(_COLLECTD_LISTS)]
        if len(dsnames) > values - total:  # the last list fits what is left: a one-value one
            plugin, plugin_instance, type_, type_instance, dsnames, dstypes = _COLLECTD_LISTS[1]
        lists.append({
            "values": [1000.0 + i * 3.5 + k for k in range(len(dsnames))],
            "dstypes": list(dstypes),
            "dsnames": list(dsnames),
            "time": _nanoseconds(i) / 1e9,
            "interval": 10.0,
            "host": _host(i),
            "plugin": plugin,
            "plugin_instance": plugin_instance or (str(i // len(_COLLECTD_LISTS) % 8) if plugin == "cpu" else ""),
            "type": type_,
            "type_instance": type_instance,
        })
        total += len(dsnames)
        i += 1
    return _json(lists)


# -- socket payloads ------------------------------------------------------------------------------


def syslog_frames(events: Sequence[LogEvent]) -> bytes:
    """The events as RFC 5424 messages (local0, structured data, a process id), each octet-counted
    (RFC 6587 §3.4.1, as rsyslog's omfwd and syslog-ng send over TCP), one after the other."""
    frames = []
    for i, event in enumerate(events):
        priority = LOCAL0 * 8 + SYSLOG_SEVERITIES[event["level"]]
        message = (
            f"<{priority}>1 {_iso(i)} {_host(i)} {event['source']} {1000 + i % 64} - "
            f'[origin@32473 ip="10.0.{i % 4}.{i % 250}" software="checkout"] {event["message"]}'
        ).encode()
        frames.append(b"%d %s" % (len(message), message))
    return b"".join(frames)


def forward_entries(events: Sequence[LogEvent]) -> bytes:
    """A MessagePackEventStream: ``[EventTime, record]`` entries one after the other, records as
    Fluent Bit's tail input and kubernetes filter leave them (``log``, ``stream``, ``level``)."""
    entries = []
    for i, event in enumerate(events):
        seconds, nanoseconds = divmod(_nanoseconds(i), 1_000_000_000)
        time_ = msgspec.msgpack.Ext(0, struct.pack(">II", seconds, nanoseconds))
        record = {"log": event["message"], "stream": "stdout", "level": event["level"], "host": _host(i)}
        entries.append(_msgpack([time_, record]))
    return b"".join(entries)


def forward_message(entries: bytes, size: int, chunk: str | None = None, tag: str = FORWARD_TAG) -> bytes:
    """A PackedForward message ``[tag, entries, option]``; with ``chunk``, the client wants ``{"ack": chunk}``."""
    option: dict[str, Any] = {"size": size}
    if chunk is not None:
        option["chunk"] = chunk
    return _msgpack([tag, entries, option])


def chunk_id() -> str:
    """A chunk id as out_forward makes it: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode()


# -- load ------------------------------------------------------------------------------------------


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on the port (a gateway without that listener does not)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class Completion:
    at: float  # time.monotonic() of the answer
    latency: float  # seconds from the send
    ok: bool


class Load:
    """Threads that each serve one connection until stopped (:meth:`running`): what they completed
    (:meth:`within` a window) and why a connection stopped early (``failures``)."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.failures: list[str] = []
        self.refusals: dict[str, int] = {}
        self._completions: list[Completion] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def connection(self, stopped: Callable[[], bool]) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        try:
            self.connection(self._stop.is_set)
        except (OSError, ValueError, msgspec.DecodeError) as error:
            if not self._stop.is_set():
                with self._lock:
                    self.failures.append(f"{type(error).__name__}: {error}")

    def done(self, started: float, refusal: str = "") -> None:
        """One request answered, taken unless ``refusal`` says why not."""
        now = time.monotonic()
        with self._lock:
            self._completions.append(Completion(now, now - started, not refusal))
            if refusal:
                self.refusals[refusal] = self.refusals.get(refusal, 0) + 1

    def within(self, start: float, end: float) -> list[Completion]:
        with self._lock:
            return [completion for completion in self._completions if start <= completion.at < end]

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._serve, daemon=True) for _ in range(self.connections)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=40)


class StreamLoad(Load):
    """``payload`` written again and again on each connection, as fast as the listener reads it:
    a syslog relay or a forwarder that never waits for an answer. Nothing answers, so nothing is
    recorded; what was taken is the gateway's to count."""

    def __init__(self, port: int, payload: bytes, connections: int) -> None:
        super().__init__(connections)
        self.port = port
        self.payload = payload

    def connection(self, stopped: Callable[[], bool]) -> None:
        view = memoryview(self.payload)
        offset = 0
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.settimeout(0.5)  # a blocked send wakes up to see whether the step is over
            while not stopped():
                try:
                    offset = (offset + sock.send(view[offset:])) % len(view)
                except TimeoutError:
                    continue


class AckedForwardLoad(Load):
    """Forward chunks of ``size`` entries with ``option.chunk``, each sent once the previous one's
    ack came back (out_forward with ``require_ack_response``; Fluent Bit's ``Require_ack_response``)."""

    def __init__(self, port: int, entries: bytes, size: int, connections: int, ack_timeout: float = 60.0) -> None:
        super().__init__(connections)
        self.port = port
        self.entries = entries
        self.size = size
        self.ack_timeout = ack_timeout

    def connection(self, stopped: Callable[[], bool]) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.settimeout(0.5)
            while not stopped():
                chunk = chunk_id()
                message = forward_message(self.entries, self.size, chunk)
                started = time.monotonic()
                sock.sendall(message)
                answer = self._ack(sock, started, stopped)
                if answer is None:
                    return
                if answer != {"ack": chunk}:
                    raise ValueError(f"chunk {chunk} answered with {answer!r}")
                self.done(started)

    def _ack(self, sock: socket.socket, started: float, stopped: Callable[[], bool]) -> Any:
        received = b""
        while True:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                if time.monotonic() - started > self.ack_timeout:
                    raise TimeoutError(f"no ack within {self.ack_timeout:.0f} s") from None
                if stopped() and time.monotonic() - started > 5:
                    return None
                continue
            if not data:
                raise ConnectionError("closed by the gateway before the ack")
            received += data
            try:
                return msgspec.msgpack.decode(received)
            except msgspec.DecodeError as error:
                if "truncated" not in str(error):
                    raise


class GrpcLoad(Load):
    """``LogsService/Export`` of one ``ExportLogsServiceRequest``, one call at a time per thread,
    over one channel (HTTP/2 multiplexes the calls), as the Python OTLP/gRPC exporter's stub makes them."""

    def __init__(self, port: int, request: bytes, connections: int) -> None:
        super().__init__(connections)
        self.request = ExportLogsServiceRequest.FromString(request)
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )

    def connection(self, stopped: Callable[[], bool]) -> None:
        stub = logs_service_pb2_grpc.LogsServiceStub(self.channel)  # type: ignore[no-untyped-call]  # protoc's, untyped
        while not stopped():
            started = time.monotonic()
            try:
                answer = stub.Export(self.request, timeout=30)
            except grpc.RpcError as error:
                self.done(started, str(error.code()))
                time.sleep(0.01)  # a refusal is answered at once: do not spin on it
            else:
                rejected = answer.partial_success.rejected_log_records
                self.done(started, f"{rejected} records rejected" if rejected else "")

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        with self.channel, super().running() as load:
            yield load
