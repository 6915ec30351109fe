"""API keys bound to client certificates' subjects: how they are written, and which key a request gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.admission import Admission
from app.auth import load_api_keys
from app.config import SettingsError, load_settings
from app.core import Refusal
from app.observability.metrics import Metrics


def clock() -> float:
    return 0.0


def test_a_subject_binds_a_certificate_to_a_key_written_either_way(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [
        {"name": "fleet", "rateLimit": 20, "subjects": ["DNS:fleet.clients.test", "CN=fleet"]},
        {"name": "team", "key": "team-secret"},
    ]}))
    settings = load_settings({"API_KEYS": "agent::100:CN=agent-1,web:web-secret:5:URI:spiffe://prod/web", "API_KEYS_FILE": str(keys_file)})
    keys = load_api_keys(settings, clock)
    assert keys is not None and len(keys) == 4
    agent = keys.for_certificate(frozenset({"CN=agent-1", "DNS:agent-1.clients.test"}))
    assert agent is not None and agent.name == "agent" and agent.bucket is not None and agent.bucket.rate == 100
    web = keys.for_certificate(frozenset({"URI:spiffe://prod/web"}))
    assert web is not None and web.name == "web" and keys.authenticate("Bearer web-secret") is web
    fleet = keys.for_certificate(frozenset({"DNS:fleet.clients.test"}))
    assert fleet is not None and fleet.name == "fleet" and fleet.secret == ""
    assert keys.for_certificate(frozenset({"CN=stranger"})) is None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("a::5", "the key may be empty with a subject"),
        ("a:k1:1:CN=x,b:k2:1:CN=x", "the same certificate subject"),
        ("a:k1:fast:CN=x", "is not a rate"),
    ],
)
def test_keys_that_cannot_be_told_apart_are_refused(entries: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_api_keys(load_settings({"API_KEYS": entries}), clock)


def test_a_key_with_no_secret_cannot_be_sent_as_a_bearer_token() -> None:
    keys = load_api_keys(load_settings({"API_KEYS": "agent::0:CN=agent-1,team:team-secret"}), clock)
    admission = Admission("application", Metrics(), rate_limit=0, burst=10, api_keys=keys, clock=clock)
    with pytest.raises(Refusal) as refused:
        admission.authenticate("Bearer ")
    assert refused.value.status == 401


def test_the_header_decides_and_the_certificate_stands_in_without_one() -> None:
    keys = load_api_keys(load_settings({"API_KEYS": "agent::0:CN=agent-1,team:team-secret"}), clock)
    admission = Admission("application", Metrics(), rate_limit=0, burst=10, api_keys=keys, clock=clock)
    agent = frozenset({"CN=agent-1"})
    by_certificate, by_header = admission.authenticate(None, agent), admission.authenticate("Bearer team-secret", agent)
    assert by_certificate is not None and by_certificate.name == "agent"
    assert by_header is not None and by_header.name == "team"
    for authorization, identities in (("Bearer wrong", agent), (None, frozenset({"CN=agent-2"})), (None, frozenset())):
        with pytest.raises(Refusal) as refused:
            admission.authenticate(authorization, identities)
        assert refused.value.status == 401
    off = Admission("application", Metrics(), rate_limit=0, burst=10, api_keys=None, clock=clock)
    assert off.authenticate(None, agent) is None
