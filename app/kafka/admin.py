"""Topic creation: the gateway's topics exist before it reports ready."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
import trio
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from app.kafka.errors import KafkaUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def ensure_topics(
    connection: dict[str, Any],
    topics: Iterable[TopicSpec],
    *,
    replication_factor: int,
    timeout: float,
) -> list[str]:
    """Create the topics that are missing; returns the names created. Blocking.

    Raises KafkaUnavailable when the cluster cannot be reached or refuses a creation for a
    reason other than the topic already existing.
    """
    config: dict[str, Any] = {
        **connection,
        "socket.timeout.ms": int(timeout * 1000),
        "logger": logging.getLogger("librdkafka"),
    }
    admin = AdminClient(config)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except confluent_kafka.KafkaException as error:
        raise KafkaUnavailable(error.args[0].str()) from None
    missing = [spec for spec in topics if spec.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=replication_factor, config=spec.config)
            for spec in missing
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout * 2)
        except confluent_kafka.KafkaException as error:
            if error.args[0].code() == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaUnavailable(f"creating topic {name}: {error.args[0].str()}") from None
        except TimeoutError:
            raise KafkaUnavailable(f"creating topic {name}: no answer within {timeout * 2:.0f}s") from None
        created.append(name)
    if created:
        log.info("created topics %s", ", ".join(created))
    return created


async def maintain_topics(
    connection: dict[str, Any],
    topics: list[TopicSpec],
    *,
    replication_factor: int,
    timeout: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Create the missing topics, retrying with backoff while the cluster is unreachable."""
    task_status.started()
    delay = 0.5
    while True:
        try:
            await trio.to_thread.run_sync(
                lambda: ensure_topics(
                    connection,
                    topics,
                    replication_factor=replication_factor,
                    timeout=timeout,
                ),
                abandon_on_cancel=True,
            )
        except KafkaUnavailable as error:
            log.warning("topics not ensured yet (retrying in %.1fs): %s", delay, error)
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        return
