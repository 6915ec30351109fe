"""The project's own Kafka errors. Only the adapters in this package see confluent-kafka's."""

from __future__ import annotations


class KafkaError(Exception):
    """Base of the errors raised by the Kafka adapters."""


class KafkaConfigError(KafkaError):
    """The producer or admin client rejected its configuration."""


class KafkaUnavailable(KafkaError):
    """The cluster could not be reached, or did not answer within the deadline."""
