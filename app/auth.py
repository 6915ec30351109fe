"""API keys: optional bearer-token authentication of the ingest routes, with per-key quotas.

Off unless keys are configured. ``API_KEYS`` holds ``name:key[:events_per_second]`` entries
separated by commas; ``API_KEYS_FILE`` names a JSON file
``{"keys": [{"name": "team-a", "key": "...", "rateLimit": 1000}]}``. Both may be used.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings, SettingsError
from app.ratelimit import TokenBucket


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: str
    bucket: TokenBucket | None


class Unauthorized(Exception):
    """No valid API key on a request that needs one."""


class ApiKeys:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, authorization: str | None) -> ApiKey:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        found = None
        for key in self._keys:  # compare with every key, in constant time each
            if hmac.compare_digest(key.secret.encode(), token.encode()):
                found = key
        if found is None:
            raise Unauthorized("the API key is not valid")
        return found


def _bucket(name: str, rate: float, burst: int, clock: Callable[[], float]) -> TokenBucket | None:
    if rate < 0:
        raise SettingsError(f"API key {name!r}: the rate limit cannot be negative")
    return TokenBucket(rate, max(rate, burst), clock) if rate > 0 else None


def load_api_keys(settings: Settings, clock: Callable[[], float]) -> ApiKeys | None:
    """The configured keys, or None when authentication is off."""
    burst = settings.max_batch_events
    keys: list[ApiKey] = []
    for entry in filter(None, (part.strip() for part in settings.api_keys.split(","))):
        fields = entry.split(":")
        if len(fields) not in (2, 3) or not all(fields[:2]):
            raise SettingsError("API_KEYS entries are name:key or name:key:events_per_second")
        try:
            rate = float(fields[2]) if len(fields) == 3 else 0.0
        except ValueError:
            raise SettingsError(f"API_KEYS: {fields[2]!r} is not a rate") from None
        keys.append(ApiKey(fields[0], fields[1], _bucket(fields[0], rate, burst, clock)))
    if settings.api_keys_file:
        try:
            document = json.loads(Path(settings.api_keys_file).read_text())
            for item in document["keys"]:
                rate = float(item.get("rateLimit", 0))
                keys.append(ApiKey(str(item["name"]), str(item["key"]), _bucket(str(item["name"]), rate, burst, clock)))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SettingsError(f"API_KEYS_FILE {settings.api_keys_file}: {error}") from None
    if len({key.secret for key in keys}) != len(keys):
        raise SettingsError("two API keys have the same secret")
    return ApiKeys(keys) if keys else None
