"""Admission of ingest requests: API key (401), then the rate limits (429)."""

from __future__ import annotations

import math
from collections.abc import Callable

from app.auth import ApiKey, ApiKeys, Unauthorized
from app.core import Refusal
from app.observability.metrics import Metrics
from app.ratelimit import TokenBucket, take_all


class Admission:
    """The admission step of one shipper; its routes call it (and so do the gateway's)."""

    def __init__(
        self,
        service: str,
        metrics: Metrics,
        *,
        rate_limit: float,
        burst: int,
        api_keys: ApiKeys | None,
        clock: Callable[[], float],
    ) -> None:
        self.service = service
        self._metrics = metrics
        self._keys = api_keys
        self._bucket = TokenBucket(rate_limit, max(rate_limit, burst), clock) if rate_limit > 0 else None
        # Exported at 0 from the start: rate() and increase() then see the first throttled burst.
        metrics.throttled.labels(service)

    def authenticate(self, authorization: str | None, identities: frozenset[str] = frozenset()) -> ApiKey | None:
        """The API key of a request's ``Authorization`` header, or without one the key its client
        certificate's ``identities`` stand for (None when authentication is off); 401 without either."""
        if self._keys is None:
            return None
        if not authorization and identities:
            key = self._keys.for_certificate(identities)
            if key is not None:
                return key
        try:
            return self._keys.authenticate(authorization)
        except Unauthorized as error:
            raise Refusal(
                401, "unauthorized", str(error), headers={"WWW-Authenticate": 'Bearer realm="kafka-log-gateway"'}
            ) from None

    def admit(self, key: ApiKey | None, count: int) -> None:
        """Take ``count`` events from the shipper's and the key's buckets; 429 when either is short."""
        buckets = [b for b in (self._bucket, key.bucket if key else None) if b is not None]
        wait = take_all(buckets, count)
        if wait:
            self._metrics.throttled.labels(self.service).inc(count)
            raise Refusal(
                429,
                "rate limited",
                f"{count} events exceed the {self.service} rate limit (or this API key's quota); retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait))) if math.isfinite(wait) else "60"},
            )
