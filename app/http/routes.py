"""The route tables: which requests each listener serves, in which dialect, for which stream.

Each shipper declares its routes once (``ROUTES`` in :mod:`app.shippers.application`,
:mod:`~app.shippers.infrastructure`, :mod:`~app.shippers.transaction`); a listener's table is
the routes of the shippers it serves. Serving (:mod:`app.http.pipeline`), the OpenAPI document
(:mod:`app.http.openapi`), the gateway's forwarding and the tests' lists of routes all derive
from these tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from app.config import Settings
from app.dialects.base import Answer, Dialect, Request
from app.streams import Stream

_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
T = TypeVar("T")


@runtime_checkable
class Configured(Protocol):
    """A dialect whose answers depend on the settings (the Elasticsearch version the handshake
    reports): the runtime serves ``dialect.configured(settings)`` in its place."""

    def configured(self, settings: Settings) -> Dialect: ...


class View(Protocol):
    """A route that reads from its stream instead of taking events (a transaction's status)."""

    def operation(self) -> dict[str, Any]: ...

    async def respond(self, stream: Stream, request: Request) -> Answer: ...


@dataclass(frozen=True, slots=True)
class Route:
    """One route: ``path`` is an OpenAPI path template (``/api/v1/transactions/{eventId}``).

    An ingest route names its ``dialect``; a read-only route its ``view``. ``gateway`` False keeps
    a route on its shipper's listener alone, off the gateway's table: the gateway keeps its own
    view at that path (the status page at ``/``, where the application listener answers
    Elasticsearch clients' ``GET /``).
    """

    method: str
    path: str
    stream: str  # the shipper whose stream serves it: application, infrastructure, transaction
    dialect: Dialect | None = None
    view: View | None = None
    gateway: bool = True

    def operation(self) -> dict[str, Any]:
        handler = self.dialect or self.view
        assert handler is not None, f"{self.path}: a route has a dialect or a view"
        return handler.operation()

    @property
    def parameters(self) -> list[str]:
        return _PARAMETER.findall(self.path)


def table(*routes: Iterable[Route]) -> tuple[Route, ...]:
    """One listener's table from its shippers' routes; a method and path served twice is an error."""
    merged: list[Route] = []
    seen: set[tuple[str, str]] = set()
    for group in routes:
        for route in group:
            key = (route.method, route.path)
            if key in seen:
                raise ValueError(f"{route.method} {route.path} is in two route tables")
            seen.add(key)
            merged.append(route)
    return tuple(merged)


class Matcher(Generic[T]):
    """Finds the entry for a method and path: exact paths by dictionary, templates by pattern."""

    def __init__(self, entries: Sequence[tuple[Route, T]]) -> None:
        self._exact: dict[tuple[str, str], T] = {}
        self._templates: list[tuple[str, re.Pattern[str], T]] = []
        for route, entry in entries:
            if route.parameters:
                self._templates.append((route.method, _pattern(route.path), entry))
            else:
                self._exact[(route.method, route.path)] = entry

    def match(self, method: str, path: str) -> tuple[T, Mapping[str, str]] | None:
        entry = self._exact.get((method, path))
        if entry is not None:
            return entry, {}
        for wanted, pattern, entry in self._templates:
            if wanted == method:
                found = pattern.match(path)
                if found is not None:
                    return entry, found.groupdict()
        return None

    def methods(self, path: str) -> list[str]:
        """The methods the table serves at ``path`` (a 405's ``Allow``); none when it has no such path."""
        found = [method for method, exact in self._exact if exact == path]
        found += [method for method, pattern, _ in self._templates if pattern.match(path)]
        return sorted(set(found))


def _pattern(template: str) -> re.Pattern[str]:
    """``/a/{name}/b`` as ``^/a/(?P<name>[^/]+)/b$``."""
    parts: list[str] = []
    last = 0
    for found in _PARAMETER.finditer(template):
        parts.append(re.escape(template[last : found.start()]))
        parts.append(f"(?P<{found.group(1)}>[^/]+)")
        last = found.end()
    parts.append(re.escape(template[last:]))
    return re.compile("^" + "".join(parts) + "$")
