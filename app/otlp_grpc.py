"""OTLP over gRPC: ``LogsService/Export`` and ``MetricsService/Export`` on ``OTLP_GRPC_PORT``.

The services are the gateway's, as OTLP/HTTP on 8080 is: each serves the gateway table's
``/v1/logs`` or ``/v1/metrics`` entry. An export bound in this process goes through the same steps
as over HTTP (:meth:`app.http.pipeline.Pipeline.ingest`: the key from the ``authorization``
metadata or the client certificate, the stream's checks, the OTLP dialect's decode, admission,
the stream and the dialect's answer); one for a shipper that runs apart is forwarded to its
OTLP/HTTP route. The answer is the dialect's: the export response for a success (partial success
included), else the ``google.rpc.Status`` OTLP/HTTP answers with, whose code becomes the call's
status (INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED for a rate limit, UNAVAILABLE for a
full buffer or an open breaker). A refusal with a Retry-After carries a ``google.rpc.RetryInfo``
in the status details (``grpc-status-details-bin``, as the OTLP specification asks) and in
``google.rpc.retryinfo-bin`` (where the Python exporter looks), so exporters wait that long and
retry.

grpcio's server runs beside trio in threads of its own (``OTLP_GRPC_WORKERS``): each call is
handed to trio with ``trio.from_thread.run`` and the trio token taken at start. It is bounded in
message size (``MAX_REQUEST_BYTES``, after gzip too), in calls under way
(``OTLP_GRPC_MAX_CONCURRENT_RPCS``; grpcio answers RESOURCE_EXHAUSTED past it) and in streams per
connection, and it stops within ``GRACEFUL_TIMEOUT`` once the shutdown trigger fires.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Final

import grpc
import trio
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

from app import otlp
from app.config import Settings
from app.core import Refusal, Tracer
from app.dialects.base import Request
from app.http.pipeline import Forward, Ingest, Pipeline
from app.observability.metrics import Metrics
from app.observability.tracing import request_context
from app.tls import ServerTLS, pem_identities

log = logging.getLogger(__name__)

LISTENER: Final = "otlp-grpc"
# Each service's Export, and the gateway route whose entry it serves.
SERVICES: Final = {
    "opentelemetry.proto.collector.logs.v1.LogsService": "/v1/logs",
    "opentelemetry.proto.collector.metrics.v1.MetricsService": "/v1/metrics",
}
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}
# Metadata a forwarded export keeps: the key and the trace context.
_FORWARDED: Final = ("authorization", "traceparent", "tracestate", "x-request-id")
_MAX_CACHED_PEERS: Final = 1024


class _Exports:
    """The servicer: one method per service, each a call into trio."""

    def __init__(self, pipeline: Pipeline, metrics: Metrics, tracer: Tracer, token: trio.lowlevel.TrioToken) -> None:
        self._pipeline = pipeline
        self._tracer = tracer
        self._token = token
        self._requests = metrics.http_requests
        self._duration = metrics.http_duration
        self._peers: dict[bytes, frozenset[str]] = {}

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """A handler per service whose route the gateway's table has; bodies stay bytes (the dialect decodes)."""
        handlers = []
        for service, path in SERVICES.items():
            entry = self._pipeline.entry("POST", path)
            if isinstance(entry, (Ingest, Forward)):
                method = grpc.unary_unary_rpc_method_handler(partial(self._export, f"/{service}/Export", entry))
                handlers.append(grpc.method_handlers_generic_handler(service, {"Export": method}))
        return handlers

    def _identities(self, context: grpc.ServicerContext) -> frozenset[str]:
        certificates = context.auth_context().get("x509_pem_cert")
        if not certificates:
            return frozenset()
        pem = certificates[0]
        found = self._peers.get(pem)
        if found is None:
            if len(self._peers) >= _MAX_CACHED_PEERS:
                self._peers.clear()
            found = self._peers[pem] = pem_identities(pem)
        return found

    def _export(self, method: str, entry: Ingest | Forward, body: bytes, context: grpc.ServicerContext) -> bytes:
        """In one of grpcio's threads: the call, handed to trio, and its answer as a gRPC status."""
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        try:
            status, answer, headers = trio.from_thread.run(
                self._call, method, entry, body, metadata, self._identities(context), trio_token=self._token
            )
        except (trio.RunFinishedError, trio.Cancelled):
            context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")
        if status == 200:
            return answer
        code, message = _status(status, answer)
        rpc_status = Status(code=code, message=message)
        trailing: list[tuple[str, bytes]] = []
        retry_after = next((value for name, value in headers.items() if name.lower() == "retry-after"), None)
        if retry_after is not None and retry_after.isdigit():
            retry = RetryInfo(retry_delay=Duration(seconds=int(retry_after)))
            rpc_status.details.add().Pack(retry)
            trailing.append(("google.rpc.retryinfo-bin", retry.SerializeToString()))
        trailing.append(("grpc-status-details-bin", rpc_status.SerializeToString()))
        context.set_trailing_metadata(trailing)
        context.abort(_CODES.get(code, grpc.StatusCode.UNKNOWN), message)
        raise AssertionError("abort raises")  # pragma: no cover

    async def _call(
        self, method: str, entry: Ingest | Forward, body: bytes, metadata: Mapping[str, str], identities: frozenset[str]
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """On the trio thread: the export through the gateway's entry; its HTTP status, body and headers."""
        started = time.perf_counter()
        path = entry.route.path
        headers = {**metadata, "content-type": otlp.PROTOBUF}
        request = Request("POST", path, headers, media_type=otlp.PROTOBUF)
        trace = request_context(metadata.get("traceparent"), metadata.get("tracestate"), metadata.get("x-request-id"))
        span = self._tracer.start_request(method, path, LISTENER, trace)
        status = 500
        try:
            if isinstance(entry, Ingest):
                answer = await self._pipeline.ingest(entry, request, identities, trace, span, _given(body))
                status = answer.status
                return status, answer.body, answer.headers
            status, answer_body, answer_headers = await _forward(entry, headers, body)
            return status, answer_body, answer_headers
        finally:
            span.end(status)
            self._requests.labels(LISTENER, method, str(status)).inc()
            self._duration.labels(LISTENER, method).observe(time.perf_counter() - started)


def _given(body: bytes) -> Callable[[], Awaitable[bytes]]:
    async def received() -> bytes:
        return body

    return received


async def _forward(entry: Forward, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes, dict[str, str]]:
    """An export for a shipper that runs apart: its OTLP/HTTP route answers."""
    sent = [(name.encode(), headers[name].encode("latin-1")) for name in (*_FORWARDED, "content-type") if name in headers]
    try:
        answer = await entry.upstream.forward("POST", entry.route.path.encode(), sent, body)
    except Refusal as refusal:
        return refusal.status, otlp.status(refusal.status, refusal.describe()).SerializeToString(), refusal.headers
    return answer.status, answer.body, {k.decode("latin-1"): v.decode("latin-1") for k, v in answer.headers}


def _status(http_status: int, body: bytes) -> tuple[int, str]:
    """The gRPC code and message of a refusal: those of the google.rpc.Status the OTLP route answered."""
    try:
        answered = Status.FromString(body)
    except DecodeError:
        answered = Status()
    if answered.code:
        return answered.code, answered.message
    return otlp.status(http_status, "").code, answered.message or f"HTTP {http_status}"


def _credentials(tls: ServerTLS) -> Any:
    """Server credentials that take a reloaded certificate and client CA from the next handshake on."""

    def configuration() -> Any:
        pair = tls.pair
        return grpc.ssl_server_certificate_configuration(
            [(pair.private_key, pair.certificate_chain)], root_certificates=tls.client_ca
        )

    served = [tls.generation]

    def fetch() -> Any:  # grpcio calls it before each handshake
        if tls.generation == served[0]:
            return None
        served[0] = tls.generation
        return configuration()

    return grpc.dynamic_ssl_server_credentials(configuration(), fetch, require_client_authentication=tls.mutual)


async def serve_otlp_grpc(
    settings: Settings,
    pipeline: Pipeline,
    metrics: Metrics,
    tracer: Tracer,
    tls: ServerTLS | None,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the OTLP gRPC services of the gateway's ``pipeline`` until ``shutdown_trigger`` returns."""
    exports = _Exports(pipeline, metrics, tracer, trio.lowlevel.current_trio_token())
    executor = ThreadPoolExecutor(max_workers=settings.otlp_grpc_workers, thread_name_prefix=LISTENER)
    server = grpc.server(
        executor,
        handlers=exports.handlers(),
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_concurrent_streams", min(100, settings.otlp_grpc_max_concurrent_rpcs)),
            ("grpc.max_connection_idle_ms", 600_000),
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),  # grpcio's default is on: two gateways would share
        ],
        maximum_concurrent_rpcs=settings.otlp_grpc_max_concurrent_rpcs,
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.otlp_grpc_port}"
    try:
        port = server.add_secure_port(address, _credentials(tls)) if tls else server.add_insecure_port(address)
    except RuntimeError as error:
        executor.shutdown(wait=False)
        raise OSError(f"OTLP_GRPC_PORT: cannot listen on {address} ({error})") from None
    server.start()
    try:
        task_status.started([f"{'https' if tls else 'http'}://{host}:{port}"])
        await shutdown_trigger()
    finally:
        # Calls under way get the graceful timeout; their trio halves still run meanwhile.
        with trio.CancelScope(shield=True):
            stopped = server.stop(settings.graceful_timeout)
            await trio.to_thread.run_sync(stopped.wait, settings.graceful_timeout + 1.0, abandon_on_cancel=True)
        executor.shutdown(wait=False, cancel_futures=True)
