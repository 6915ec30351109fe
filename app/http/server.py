"""The HTTP listeners' server: hypercorn's trio worker, with each connection's start and end handled here.

This is hypercorn's ``worker_serve`` (0.18) for one bind, with four changes:

- TLS: each connection's handshake is completed here, within :data:`HANDSHAKE_TIMEOUT_SECONDS`,
  and its requests then carry ``scope["extensions"]["tls"]`` (:func:`app.tls.asgi_extension`):
  hypercorn hands the app nothing of a connection's TLS state (its issue #62, the ASGI TLS
  extension, is open), and mutual TLS needs the client's certificate. The context is
  :class:`app.tls.ServerTLS`'s, so a reloaded certificate is served from the next handshake on. A
  client that does not complete a handshake (plain HTTP sent to the port, a certificate of another
  CA, none under mutual TLS) is closed after the TLS alert, and nothing of it reaches the app.
- An error that escapes hypercorn's protocol code ends that connection, not the listener. Its
  HTTP/2 code raises ``KeyError`` on DATA for a stream it has answered and closed (its issue #329,
  unfixed in 0.18): a client that keeps sending a body the gateway refused early (405, 401, 415) on
  HTTP/2, through ALPN or with prior knowledge on a plain port, would otherwise stop the listener's
  nursery, and the process with it.
- A connection the client closed is closed at once. hypercorn's trio ``TCPServer`` ends its read
  loop on the client's EOF (a FIN, a TLS close_notify or a ragged end of TLS) but leaves the
  keep-alive timer running in the connection's task group, whose end the socket's close awaits:
  a client that closes an idle keep-alive connection would leave the server's socket in
  CLOSE_WAIT, with its TLS buffers, for the whole ``keep_alive_timeout``. Once nothing more can be
  read, :class:`_TCPServer` stops that timer and starts it no more.
- A connection that ended is freed at once, by reference counting. hypercorn's ``TCPServer`` and
  its protocol hold each other (the protocol sends through a bound method of the server), and
  trio's ``SSLStream`` holds itself (its handshake is a ``_Once`` of its own bound method), so
  every ended connection, over TLS with its ``SSLObject`` and OpenSSL state (about 33 KB), used to
  wait for the cyclic garbage collector, which ``python -m app`` runs seldom
  (``gc.set_threshold(50_000, ...)``): under TLS clients that open many short connections, tens of
  MB of them piled up between collections. Both references are dropped when the connection ends.
- The keep-alive timer is one task per connection whose deadline moves (:class:`_KeepAlive`).
  hypercorn restarts its timer after every response (a new task started in the connection's
  nursery) and stops it at every request (a cancellation): a task start, a lock and a cancel per
  request, measured at a few per cent of the process's CPU under load (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import hypercorn.config
import trio
from hypercorn.events import Event, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from app.tls import ServerTLS, asgi_extension

log = logging.getLogger(__name__)

# A handshake not done by then is dropped: a client that opens connections and sends nothing holds little.
HANDSHAKE_TIMEOUT_SECONDS = 10.0


class _KeepAlive:
    """hypercorn's keep-alive timer (the ``idle_task`` of its ``TCPServer``) as one task per connection.

    While the connection is idle, the task waits for ``keep_alive_timeout`` or the server's shutdown,
    whichever comes first, and then closes the connection, as hypercorn's ``_idle_timeout`` does;
    while a request is in flight, it waits with no deadline, and a shutdown closes the connection
    once it is idle again. :meth:`restart` and :meth:`stop` only move the deadline.
    """

    def __init__(self, server: _TCPServer) -> None:
        self._server = server
        self._idle = False
        self._scope: trio.CancelScope | None = None  # the running watch's wait
        self._went_idle: trio.Event | None = None  # only once the shutdown came while busy
        self._closed = False

    async def restart(self, task_group: Any, action: Any) -> None:
        """The connection is idle from now on (``action``, hypercorn's own timer, is not used)."""
        self._idle = True
        if self._went_idle is not None:
            self._went_idle.set()
        if self._scope is None:
            if not self._closed:
                await task_group._nursery.start(self._watch)
            return
        self._scope.deadline = trio.current_time() + self._server.config.keep_alive_timeout

    async def stop(self) -> None:
        """A request is in flight: no deadline until it is answered."""
        self._idle = False
        if self._scope is not None:
            self._scope.deadline = math.inf

    def close(self) -> None:
        """Nothing more can be read: the watch ends and starts no more."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        terminated = self._server.context.terminated
        with trio.CancelScope(deadline=trio.current_time() + self._server.config.keep_alive_timeout) as scope:
            self._scope = scope
            task_status.started()
            await terminated.wait()
            while not self._idle:  # the shutdown came during a request: close once it is answered
                self._went_idle = trio.Event()
                await self._went_idle.wait()
        self._scope = None
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._server._initiate_server_close()


class _TCPServer(TCPServer):
    """hypercorn's connection, closed as soon as its client has closed it, with a cheaper keep-alive
    timer (see the module's docstring)."""

    _read_ended = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._keep_alive = _KeepAlive(self)
        self.idle_task = self._keep_alive  # type: ignore[assignment]

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            # The protocol holds this server's bound methods, the keep-alive timer the server.
            for held in ("protocol", "idle_task", "_keep_alive"):
                vars(self).pop(held, None)

    async def _read_data(self) -> None:
        await super()._read_data()
        self._read_ended = True
        self._keep_alive.close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and self._read_ended:
            return  # no request can come any more: nothing for a keep-alive timer to wait for
        await super().protocol_send(event)


def _forget_handshake(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Drop what holds an ended SSLStream to itself (``self._handshook = _Once(self._do_handshake)``
    in trio 0.35): freed by reference counting, not left to the cyclic collector."""
    vars(stream).pop("_handshook", None)


class _WithTLS:
    """The app as one connection's requests see it: the connection's TLS extension in every scope."""

    def __init__(self, app: AppWrapper, extension: dict[str, Any]) -> None:
        self._app = app
        self._extension = extension

    async def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Callable[..., Any], call_soon: Callable[..., Any]
    ) -> None:
        if scope["type"] in {"http", "websocket"}:
            scope["extensions"]["tls"] = self._extension
        await self._app(scope, receive, send, sync_spawn, call_soon)


async def serve(
    app: Any,  # an ASGI app (hypercorn's Framework alias is narrower than what it takes)
    config: hypercorn.config.Config,
    *,
    tls: ServerTLS | None = None,
    shutdown_trigger: Callable[..., Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``config.bind`` (over TLS with ``tls``) until ``shutdown_trigger`` returns,
    as ``hypercorn.trio.serve`` does; reports the bound URLs."""
    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)

    async def serve_connection(served: Any, connection_app: AppWrapper) -> None:
        try:
            await _TCPServer(connection_app, config, context, ConnectionState(lifespan_state.copy()), served)
        except Exception as error:  # see the module's docstring: this connection ends, the listener serves on
            log.debug("a connection ended on a server error: %r", error)

    async def connection(stream: trio.SocketStream) -> None:
        if tls is None:
            await serve_connection(stream, wrapped)
            return
        served = trio.SSLStream(stream, tls.context, server_side=True, https_compatible=True)
        try:
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT_SECONDS):
                    await served.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                await trio.aclose_forcefully(served)
                return
            await serve_connection(served, _WithTLS(wrapped, asgi_extension(served)))
        finally:
            _forget_handshake(served)

    scheme = "https" if tls is not None else "http"
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with trio.open_nursery() as server_nursery:
            listeners = []
            binds = []
            for sock in config.create_sockets().insecure_sockets:  # the TLS is ours: hypercorn sees plain sockets
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                bind = repr_socket_addr(sock.family, sock.getsockname())
                binds.append(f"{scheme}://{bind}")
                await config.log.info(f"Running on {scheme}://{bind} (CTRL + C to quit)")
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(trio.serve_listeners, connection, listeners, handler_nursery=server_nursery)
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
