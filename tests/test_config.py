"""Settings: declared once, bounded, loaded from the environment; docs/configuration.md generated from them."""

from __future__ import annotations

import dataclasses
import re

import pytest

from app.config import (
    PROFILE_DEFAULTS,
    PROFILE_SETTINGS,
    SECTIONS,
    SETTINGS,
    Declared,
    ProfileSettings,
    Settings,
    SettingsError,
    load_settings,
)
from scripts import config_doc
from tests.conftest import ROOT

ROW = re.compile(r"^\| `([A-Z_]+)` \|(.*)\|$")
DEFAULT = re.compile(r"^`(.*)`|^\*\(empty\)\*$")


def test_defaults_match_the_documented_profiles() -> None:
    settings = load_settings({})
    app = settings.application
    assert (app.topic, app.acks, app.compression, app.batch_size, app.linger_ms) == ("application-logs", "1", "lz4", 32768, 10)
    assert app.buffer_bytes == 64 * 1024 * 1024
    assert app.dead_letter_topic == "application-logs.dlq"
    tx = settings.transaction
    assert (tx.topic, tx.acks, tx.idempotence) == ("transaction-logs", "all", True)
    assert settings.infrastructure.topic == "infrastructure-logs"
    assert (settings.gateway_port, settings.application_port, settings.infrastructure_port, settings.transaction_port) == (
        8080, 8081, 8082, 8083,
    )
    assert settings.syslog_topic == ""


def test_environment_overrides_top_level_and_profile_fields() -> None:
    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "10.0.0.1:9092",
            "GATEWAY_PORT": "9000",
            "APPLICATION_LINGER_MS": "50",
            "APPLICATION_TOPIC": "logs-x",
            "TRANSACTION_IDEMPOTENCE": "true",
            "READY_TIMEOUT": "0.5",
            "MAX_BATCH_EVENTS": "1_000",
            "SYSLOG_TOPIC": "syslog-logs",
        }
    )
    assert settings.kafka_bootstrap_servers == "10.0.0.1:9092"
    assert settings.gateway_port == 9000
    assert settings.application.linger_ms == 50
    assert settings.application.topic == "logs-x"
    assert settings.application.dead_letter_topic == "logs-x.dlq"
    assert settings.infrastructure.linger_ms == 10
    assert settings.infrastructure.topic == "infrastructure-logs"
    assert settings.transaction.retries == 2_147_483_647  # a profile's own defaults stay under an override
    assert settings.ready_timeout == 0.5
    assert settings.max_batch_events == 1000
    assert settings.syslog_topic == "syslog-logs"
    assert type(settings) is Settings and type(settings.application) is ProfileSettings


SPELLINGS = [*((s, True) for s in ("1", "true", "Yes", " on ")), *((s, False) for s in ("0", "FALSE", "no", "off"))]


@pytest.mark.parametrize("spelling, value", SPELLINGS)
def test_booleans_take_the_usual_spellings(spelling: str, value: bool) -> None:
    assert load_settings({"REUSE_PORT": spelling}).reuse_port is value
    assert load_settings({"APPLICATION_IDEMPOTENCE": spelling}).application.idempotence is value


def test_choices_are_matched_without_regard_to_case() -> None:
    settings = load_settings({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "APPLICATION_ACKS": "ALL", "LOG_LEVEL": "debug"})
    assert (settings.kafka_security_protocol, settings.application.acks, settings.log_level) == ("SASL_SSL", "all", "DEBUG")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"UPSTREAM_CONNECTIONS": "0"}, "UPSTREAM_CONNECTIONS='0' is refused: expected an integer, 1 to 100000"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT='70000' is refused: expected an integer, 0 to 65535"),
        ({"SYSLOG_PORT": "-1"}, "SYSLOG_PORT='-1' is refused: expected an integer, 0 to 65535"),
        ({"UPSTREAM_TIMEOUT": "nan"}, "UPSTREAM_TIMEOUT='nan' is refused: expected a number, above 0, at most 3600"),
        ({"OUTBOX_WRITE_TIMEOUT": "inf"}, "OUTBOX_WRITE_TIMEOUT='inf' is refused: expected a number, above 0"),
        ({"OUTBOX_QUEUE": "-1"}, "OUTBOX_QUEUE='-1' is refused: expected an integer, 1 to 10000000"),
        ({"APPLICATION_BUFFER_EVENTS": "-5"}, "APPLICATION_BUFFER_EVENTS='-5' is refused: expected an integer, 1 to 100000000"),
        ({"APPLICATION_RATE_LIMIT": "nan"}, "APPLICATION_RATE_LIMIT='nan' is refused: expected a number, 0 to 1000000000"),
        ({"APPLICATION_ACKS": "2"}, "APPLICATION_ACKS='2' is refused: expected one of 0, 1, all or -1"),
        ({"INFRASTRUCTURE_COMPRESSION": "brotli"}, "INFRASTRUCTURE_COMPRESSION='brotli' is refused: expected one of"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml' is refused: expected one of json or text"),
        ({"TRANSACTION_IDEMPOTENCE": "maybe"}, "TRANSACTION_IDEMPOTENCE='maybe' is refused: expected true or false"),
        ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT='eighty' is refused: expected an integer, 0 to 65535"),
        ({"MAX_REQUEST_BYTES": "0"}, "MAX_REQUEST_BYTES='0' is refused: expected an integer, 1 to 1073741824 (1 GiB)"),
        ({"READY_TIMEOUT": "301"}, "READY_TIMEOUT='301' is refused: expected a number, above 0, at most 300"),
        ({"APPLICATION_TOPIC": "a b"}, "APPLICATION_TOPIC='a b' is refused: expected 1 to 200 of A-Z a-z 0-9 . _ -"),
        ({"TOPIC_REPLICATION_FACTOR": "0"}, "TOPIC_REPLICATION_FACTOR=0 is refused"),
        ({"MAX_EVENT_BYTES": "100", "MAX_REQUEST_BYTES": "10"}, "MAX_EVENT_BYTES=100 is refused: MAX_EVENT_BYTES cannot"),
        ({"TRANSACTION_DURABILITY": "disk"}, "TRANSACTION_DURABILITY=disk is refused"),
        ({"ROLES": "gateway,proxy"}, "ROLES must be a comma-separated subset"),
    ],
)
def test_values_out_of_bounds_are_refused_with_the_variable_the_value_and_the_bound(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert str(info.value).startswith(message), info.value
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "env",
    [
        {"OUTBOX_POLL_INTERVAL": "0"},
        {"FLUSH_TIMEOUT": "-1"},
        {"COLLECTOR_INTERVAL": "inf"},
        {"OUTBOX_RETENTION_HOURS": "nan"},
        {"UPSTREAM_CONNECT_TIMEOUT": "1e400"},
        {"WORKERS": "0"},
        {"TOPIC_PARTITIONS": "0"},
        {"LAG_MAX_GROUPS": "-3"},
        {"BREAKER_FAILURES": "0"},
        {"OTLP_GRPC_WORKERS": "0"},
        {"SYSLOG_MAX_CONNECTIONS": "0"},
        {"KAFKA_STATISTICS_INTERVAL_MS": "-1"},
        {"APPLICATION_SPOOL_FULL": "drop-newest"},
        {"INFRASTRUCTURE_DURABILITY": "fsync"},
        {"KAFKA_SASL_MECHANISM": "GSSAPI"},
        {"ES_COMPAT_VERSION": "latest"},
        {"SYSLOG_TOPIC": "logs/syslog"},
    ],
)
def test_invalid_values_are_refused_with_the_variable_named(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert any(name in str(info.value) for name in env), info.value


def test_zero_turns_a_listener_off_and_stays_accepted() -> None:
    env = {name: "0" for name in ("GATEWAY_PORT", "SYSLOG_PORT", "SYSLOG_TLS_PORT", "FORWARD_PORT", "OTLP_GRPC_PORT")}
    settings = load_settings({**env, "COLLECTOR_INTERVAL": "0", "LAG_INTERVAL": "0", "APPLICATION_RATE_LIMIT": "0"})
    assert (settings.gateway_port, settings.syslog_port, settings.otlp_grpc_port, settings.collector_interval) == (0, 0, 0, 0)


def every_declaration() -> list[tuple[str, Declared]]:
    profile = [(f"_{s.name.upper()}", s) for s in PROFILE_SETTINGS.values()]
    return [*((s.variable(), s) for s in SETTINGS.values()), *profile]


def test_every_number_has_both_bounds_and_every_setting_a_description() -> None:
    for variable, setting in every_declaration():
        if setting.kind == "profile":
            continue
        assert setting.description, f"{variable} has no description"
        if setting.base in (int, float):
            meta = setting.meta
            low = meta.ge if meta.ge is not None else meta.gt
            assert low is not None and meta.le is not None, f"{variable} is unbounded"


def test_sections_start_at_declared_fields_in_their_order() -> None:
    order = list(SETTINGS)
    firsts = [section.first for section in SECTIONS]
    assert firsts[0] == order[0]
    assert [order.index(first) for first in firsts] == sorted(order.index(first) for first in firsts)


def test_the_configuration_reference_is_what_the_generator_prints() -> None:
    document = ROOT / "docs" / "configuration.md"
    assert document.exists() and document.read_text() == config_doc.render(), (
        "docs/configuration.md is out of date: run `make docs` (.venv/bin/python scripts/config_doc.py)"
    )


def documented_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    return rows


def documented_default(cell: str) -> str:
    match = DEFAULT.match(cell)
    assert match, cell
    return match.group(1) or ""


def as_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_each_documented_default_is_the_loaded_default() -> None:
    rows, loaded = documented_rows(), load_settings({})
    top = [s for s in SETTINGS.values() if s.kind != "profile"]
    assert set(rows) == {s.variable() for s in top} | {f"_{name.upper()}" for name in PROFILE_SETTINGS}
    for setting in top:
        default = rows[setting.variable()][1]
        assert documented_default(default) == as_text(getattr(loaded, setting.name)), setting.variable()
    profiles = loaded.profiles()
    assert list(profiles) == list(PROFILE_DEFAULTS)
    for name in PROFILE_SETTINGS:
        cells = rows[f"_{name.upper()}"][1:4]
        expected = [as_text(getattr(profiles[p], name)) for p in PROFILE_DEFAULTS]
        assert [documented_default(c) for c in cells] == expected, name


def test_replace_keeps_working_on_loaded_settings() -> None:
    settings = load_settings({})
    changed = dataclasses.replace(settings, upstream_connections=4)
    assert changed.upstream_connections == 4 and changed.application == settings.application


@pytest.mark.parametrize("topic", ["infrastructure-logs", "transaction-logs", "application-logs.dlq"])
def test_a_syslog_topic_that_is_another_streams_or_a_dead_letter_topic_is_refused(topic: str) -> None:
    with pytest.raises(SettingsError, match="SYSLOG_TOPIC"):
        load_settings({"SYSLOG_TOPIC": topic})
