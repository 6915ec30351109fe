"""How every Kafka client of the gateway connects: bootstrap servers, TLS and SASL."""

from __future__ import annotations

from typing import Any

from app.config import Settings


CONNECTION_KEYS = frozenset(
    {
        "bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.username", "sasl.password",
        "ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.key.password",
    }
)


def only_connection(config: dict[str, Any]) -> dict[str, Any]:
    """The connection part of a client configuration (for a consumer beside a producer)."""
    return {key: value for key, value in config.items() if key in CONNECTION_KEYS}


def connection_config(settings: Settings) -> dict[str, Any]:
    """The librdkafka settings shared by the producers, the admin client and the consumers."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol.upper(),
    }
    optional = {
        "sasl.mechanism": settings.kafka_sasl_mechanism.upper(),
        "sasl.username": settings.kafka_sasl_username,
        "sasl.password": settings.kafka_sasl_password,
        "ssl.ca.location": settings.kafka_ssl_ca_location,
        "ssl.certificate.location": settings.kafka_ssl_certificate_location,
        "ssl.key.location": settings.kafka_ssl_key_location,
        "ssl.key.password": settings.kafka_ssl_key_password,
    }
    config.update({key: value for key, value in optional.items() if value})
    return config
