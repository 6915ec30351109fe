"""API keys: optional bearer-token authentication of the ingest routes, with per-key quotas.

Off unless keys are configured. ``API_KEYS`` holds ``name:key[:events_per_second[:subject]]``
entries separated by commas; ``API_KEYS_FILE`` names a JSON file
``{"keys": [{"name": "team-a", "key": "...", "rateLimit": 1000, "subjects": ["CN=agent-1"]}]}``.
Both may be used. A subject binds a client certificate to the key under mutual TLS: a request
without credentials whose certificate has that identity (``CN=...``, ``DNS:...``, see
:func:`app.tls.identities`) is the key's, quota included. A key with a subject may have no secret
(``agent-1::100:CN=agent-1``, or no ``"key"`` in the file): the certificate is then its only way in.
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
    subjects: frozenset[str] = frozenset()


class Unauthorized(Exception):
    """No valid API key on a request that needs one."""


class ApiKeys:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [key for key in keys if key.secret]
        self._by_subject = {subject: key for key in keys for subject in key.subjects}
        self._count = len(keys)

    def __len__(self) -> int:
        return self._count

    def for_certificate(self, identities: frozenset[str]) -> ApiKey | None:
        """The key a client certificate with these identities stands for, if any."""
        for identity in identities:
            key = self._by_subject.get(identity)
            if key is not None:
                return key
        return None

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
        fields = entry.split(":", 3)  # a subject may hold colons (DNS:..., URI:...)
        subjects = frozenset(fields[3:4]) - {""}
        if len(fields) < 2 or not fields[0] or not (fields[1] or subjects):
            raise SettingsError(
                "API_KEYS entries are name:key[:events_per_second[:subject]] (the key may be empty with a subject)"
            )
        try:
            rate = float(fields[2]) if len(fields) >= 3 and fields[2] else 0.0
        except ValueError:
            raise SettingsError(f"API_KEYS: {fields[2]!r} is not a rate") from None
        keys.append(ApiKey(fields[0], fields[1], _bucket(fields[0], rate, burst, clock), subjects))
    if settings.api_keys_file:
        try:
            document = json.loads(Path(settings.api_keys_file).read_text())
            for item in document["keys"]:
                rate = float(item.get("rateLimit", 0))
                subjects = frozenset(str(subject) for subject in item.get("subjects", ()))
                secret = str(item["key"]) if "key" in item or not subjects else ""
                keys.append(ApiKey(str(item["name"]), secret, _bucket(str(item["name"]), rate, burst, clock), subjects))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SettingsError(f"API_KEYS_FILE {settings.api_keys_file}: {error}") from None
    secrets = [key.secret for key in keys if key.secret]
    if len(set(secrets)) != len(secrets):
        raise SettingsError("two API keys have the same secret")
    bound = [subject for key in keys for subject in key.subjects]
    if len(set(bound)) != len(bound):
        raise SettingsError("two API keys name the same certificate subject")
    return ApiKeys(keys) if keys else None
