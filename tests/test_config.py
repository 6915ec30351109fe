import pytest

from app.config import SettingsError, load_settings


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
        }
    )
    assert settings.kafka_bootstrap_servers == "10.0.0.1:9092"
    assert settings.gateway_port == 9000
    assert settings.application.linger_ms == 50
    assert settings.application.topic == "logs-x"
    assert settings.application.dead_letter_topic == "logs-x.dlq"
    assert settings.infrastructure.linger_ms == 10
    assert settings.ready_timeout == 0.5
    assert settings.max_batch_events == 1000


@pytest.mark.parametrize(
    "env",
    [
        {"GATEWAY_PORT": "eighty"},
        {"APPLICATION_ACKS": "2"},
        {"APPLICATION_COMPRESSION": "brotli"},
        {"TRANSACTION_IDEMPOTENCE": "maybe"},
        {"APPLICATION_BUFFER_EVENTS": "0"},
        {"MAX_EVENT_BYTES": "100", "MAX_REQUEST_BYTES": "10"},
        {"OUTBOX_WRITE_TIMEOUT": "inf"},
        {"UPSTREAM_TIMEOUT": "nan"},
        {"OUTBOX_POLL_INTERVAL": "0"},
        {"FLUSH_TIMEOUT": "-1"},
        {"READY_TIMEOUT": "301"},
        {"COLLECTOR_INTERVAL": "inf"},
        {"OUTBOX_RETENTION_HOURS": "nan"},
        {"APPLICATION_RATE_LIMIT": "nan"},
    ],
)
def test_invalid_values_are_refused_with_the_variable_named(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert any(name in str(info.value) for name in env), info.value
