"""Remote shippers: a pooled HTTP/1.1 client that forwards gateway requests to them.

A shipper is configured as one or more base URLs. Every address a URL's host name resolves
to is an instance (a compose service scaled with ``--scale`` resolves to all its replicas),
re-resolved every few seconds; requests go round-robin across the instances.

A request is sent again to the next instance only when it never reached the first one
(the connection was refused or timed out): then no shipper can have acted on it. Any later
failure is answered 502 or 504, and the client decides, as it would talking to the shipper.
Status, body and headers (``Retry-After``, ``traceparent``...) come back unchanged.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from app.gateway.client import Answer, ConnectFailed, Origin, Pool, PoolBusy, UpstreamBroken, UpstreamTimeout
from app.core import Refusal
from app.observability.metrics import Metrics

log = logging.getLogger(__name__)

RESOLVE_EVERY_SECONDS = 5.0
DOWN_SECONDS = 2.0

# Hop-by-hop headers (RFC 9110, 7.6.1) and those the proxy sets itself.
_NOT_FORWARDED = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
        b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
    }
)


@dataclass(frozen=True, slots=True)
class Base:
    """A configured base URL."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Base:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) base URL")
        return cls(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(slots=True)
class Instance:
    base: Base
    address: str
    down_until: float = -math.inf

    @property
    def origin(self) -> Origin:
        return Origin(self.base.scheme, self.address, self.base.port, self.base.host)


class Upstream:
    """The instances of one remote shipper and the connection pool to reach them."""

    def __init__(
        self,
        name: str,
        urls: Sequence[str],
        metrics: Metrics,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
    ) -> None:
        if not urls:
            raise ValueError(f"no URL for the {name} shipper")
        self.name = name
        self._bases = [Base.parse(url) for url in urls]
        self._metrics = metrics
        self._pool = Pool(max_connections=max_connections, connect_timeout=connect_timeout, timeout=timeout)
        self._instances: list[Instance] = []
        self._turn = itertools.count()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the instance list fresh; close the pool when cancelled."""
        try:
            await self.resolve()
            task_status.started()
            while True:
                await trio.sleep(RESOLVE_EVERY_SECONDS)
                await self.resolve()
                await self._pool.prune()
        finally:
            with trio.CancelScope(shield=True):
                await self._pool.aclose()

    async def resolve(self) -> None:
        known = {(i.base, i.address): i for i in self._instances}
        instances: list[Instance] = []
        for base in self._bases:
            try:
                with trio.fail_after(RESOLVE_EVERY_SECONDS):
                    infos = await trio.socket.getaddrinfo(base.host, base.port, type=socket.SOCK_STREAM)
            except (OSError, trio.TooSlowError) as error:
                log.warning("%s upstream %s does not resolve (%s); keeping its last addresses", self.name, base.host, error)
                instances += [i for (b, _), i in known.items() if b == base]
                continue
            for address in sorted({str(info[4][0]) for info in infos}):
                instances.append(known.get((base, address)) or Instance(base, address))
        if [(i.base, i.address) for i in instances] != [(i.base, i.address) for i in self._instances]:
            log.info("%s upstream instances: %s", self.name, ", ".join(f"{i.address}:{i.base.port}" for i in instances))
        self._instances = instances

    def _candidates(self) -> list[Instance]:
        """Every instance once, starting at the next in turn; those marked down go last."""
        instances = self._instances
        if not instances:
            return []
        start = next(self._turn) % len(instances)
        ordered = instances[start:] + instances[:start]
        now = trio.current_time()
        return [i for i in ordered if i.down_until <= now] + [i for i in ordered if i.down_until > now]

    async def forward(self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> Answer:
        """Send one request to an instance; a refused connection moves on to the next one."""
        forwarded = [(k, v) for k, v in headers if k.lower() not in _NOT_FORWARDED]
        candidates = self._candidates()
        if not candidates:
            raise self._refusal(503, "upstream unavailable", f"no instance of the {self.name} shipper resolves")
        for instance in candidates:
            request_headers = [
                (b"Host", instance.base.authority.encode()), (b"Content-Length", str(len(body)).encode()), *forwarded
            ]
            try:
                answer = await self._pool.request(instance.origin, method.encode(), target, request_headers, body)
            except ConnectFailed as error:
                instance.down_until = trio.current_time() + DOWN_SECONDS
                self._metrics.upstream_errors.labels(self.name, "connect").inc()
                log.warning("%s upstream %s:%d: %s", self.name, instance.address, instance.base.port, error)
                continue
            except PoolBusy:
                raise self._refusal(
                    503, "gateway busy", f"every connection to the {self.name} shipper is in use; retry later",
                    metric="pool",
                ) from None
            except UpstreamTimeout:
                raise self._refusal(504, "upstream timeout", f"the {self.name} shipper did not answer in time") from None
            except UpstreamBroken as error:
                raise self._refusal(502, "upstream failed", f"the {self.name} shipper: {error}") from None
            answer_headers = [(k, v) for k, v in answer.headers if k.lower() not in _NOT_FORWARDED]
            return Answer(answer.status, answer_headers, answer.body)
        raise self._refusal(503, "upstream unavailable", f"no instance of the {self.name} shipper accepts connections")

    def _refusal(self, status: int, error: str, detail: str, *, metric: str | None = None) -> Refusal:
        self._metrics.upstream_errors.labels(self.name, metric or error.replace("upstream ", "")).inc()
        return Refusal(status, error, detail, headers={"Retry-After": "1"})

    async def ready(self, timeout: float) -> str | None:
        """None when some instance answers its ``/ready`` with 200, else why not."""
        last = "no instance resolves"
        for instance in self._candidates():
            try:
                with trio.fail_after(timeout):
                    answer = await self._pool.request(
                        instance.origin, b"GET", b"/ready", [(b"Host", instance.base.authority.encode())]
                    )
            except (ConnectFailed, PoolBusy, UpstreamTimeout, UpstreamBroken, trio.TooSlowError) as error:
                last = f"{instance.address}:{instance.base.port}: {error!r}"
                continue
            if answer.status == 200:
                return None
            last = f"{instance.address}:{instance.base.port} answered {answer.status}"
        return f"{self.name} shipper not ready ({last})"
