"""The gateway (8080): the unified entry point.

When the shippers share the process, the gateway registers their very handlers: a request
to 8080 is served exactly as the shipper would serve it, with no extra hop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from quart_trio import QuartTrio


class Shipper(Protocol):
    def register(self, app: QuartTrio) -> None: ...


def route_in_process(app: QuartTrio, shippers: Sequence[Shipper]) -> QuartTrio:
    """Serve the shippers' public routes on the gateway app."""
    for shipper in shippers:
        shipper.register(app)
    return app
