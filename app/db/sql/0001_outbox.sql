-- The transactional outbox: a transaction event is committed here before it is answered 202,
-- and a relay publishes pending rows to Kafka in id order.
CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    event_id         UUID        NOT NULL UNIQUE,
    idempotency_key  TEXT        UNIQUE,
    request_hash     BYTEA,
    topic            TEXT        NOT NULL,
    message_key      BYTEA       NOT NULL,
    payload          BYTEA       NOT NULL,
    headers          JSONB       NOT NULL DEFAULT '[]'::jsonb,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at     TIMESTAMPTZ,
    kafka_partition  INTEGER,
    kafka_offset     BIGINT
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
