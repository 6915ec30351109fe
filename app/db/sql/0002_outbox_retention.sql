-- Retention purges published rows by age; replay selects rows by creation time.
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX outbox_created_at ON outbox (created_at);
