-- Usage reported by the edge (issue 14). Counts per key at three granularities, each kept for its own
-- time: a minute for 48 h, an hour for 90 days, a day for 2 years (pruned by the server). Bucket starts
-- are unix seconds (UTC); counts only ever grow, by upserts that add.

-- The start of the latest minute in which the key had an admitted request; NULL if never.
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
-- The key list sorted by last use (never used last), and its keyset pagination.
CREATE INDEX api_keys_last_used ON api_keys ((COALESCE(last_used_at, -1)) DESC, id);

-- Batches already applied, so a retried flush never counts twice; kept 48 h.
CREATE TABLE usage_batches (
    batch_id     TEXT PRIMARY KEY,              -- 32 lower-case hex digits
    received_at  BIGINT NOT NULL
);
CREATE INDEX usage_batches_received_at ON usage_batches (received_at);

CREATE TABLE usage_minute (
    key_id        TEXT NOT NULL,
    start         BIGINT NOT NULL,
    admitted      BIGINT NOT NULL,
    forbidden     BIGINT NOT NULL,
    rate_limited  BIGINT NOT NULL,
    refused       BIGINT NOT NULL,
    PRIMARY KEY (key_id, start)
);
CREATE INDEX usage_minute_start ON usage_minute (start);

-- Admitted requests by GraphQL operation name.
CREATE TABLE usage_minute_operations (
    key_id  TEXT NOT NULL,
    start   BIGINT NOT NULL,
    name    TEXT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (key_id, start, name)
);
CREATE INDEX usage_minute_operations_start ON usage_minute_operations (start);

CREATE TABLE usage_hour (
    key_id        TEXT NOT NULL,
    start         BIGINT NOT NULL,
    admitted      BIGINT NOT NULL,
    forbidden     BIGINT NOT NULL,
    rate_limited  BIGINT NOT NULL,
    refused       BIGINT NOT NULL,
    PRIMARY KEY (key_id, start)
);
CREATE INDEX usage_hour_start ON usage_hour (start);

-- Admitted requests by GraphQL operation name.
CREATE TABLE usage_hour_operations (
    key_id  TEXT NOT NULL,
    start   BIGINT NOT NULL,
    name    TEXT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (key_id, start, name)
);
CREATE INDEX usage_hour_operations_start ON usage_hour_operations (start);

CREATE TABLE usage_day (
    key_id        TEXT NOT NULL,
    start         BIGINT NOT NULL,
    admitted      BIGINT NOT NULL,
    forbidden     BIGINT NOT NULL,
    rate_limited  BIGINT NOT NULL,
    refused       BIGINT NOT NULL,
    PRIMARY KEY (key_id, start)
);
CREATE INDEX usage_day_start ON usage_day (start);

-- Admitted requests by GraphQL operation name.
CREATE TABLE usage_day_operations (
    key_id  TEXT NOT NULL,
    start   BIGINT NOT NULL,
    name    TEXT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (key_id, start, name)
);
CREATE INDEX usage_day_operations_start ON usage_day_operations (start);
