-- The replicator reads undelivered rows in order; `edge resync` reads each key's latest row.
CREATE INDEX replication_outbox_pending ON replication_outbox (seq) WHERE delivered_at IS NULL;
CREATE INDEX replication_outbox_key ON replication_outbox (key_id, seq);
