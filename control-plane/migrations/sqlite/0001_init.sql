-- keygate schema, SQLite dialect. Times are unix seconds; JSON is stored as text.
CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,           -- 22 base62 digits, as in the key
    name            TEXT NOT NULL,
    owner           TEXT,
    tier            TEXT NOT NULL,
    permissions     TEXT NOT NULL,              -- JSON array of strings
    metadata        TEXT NOT NULL,              -- JSON object
    prefix          TEXT NOT NULL,
    region          TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    rotated_at      INTEGER,
    revoked_at      INTEGER,
    revoked_reason  TEXT,
    generation      INTEGER NOT NULL
);

CREATE TABLE api_key_secrets (
    key_id            TEXT NOT NULL REFERENCES api_keys (id),
    generation        INTEGER NOT NULL,
    secret_hash       TEXT NOT NULL UNIQUE,     -- sha256_hex of the whole key
    ciphertext        BLOB NOT NULL,            -- nonce || AES-256-GCM(key) under the data key
    wrapped_data_key  BLOB NOT NULL,            -- the data key, wrapped by KMS
    kms_key_id        TEXT NOT NULL,
    data_key_version  INTEGER NOT NULL,         -- bumped by each rewrap
    created_at        INTEGER NOT NULL,
    not_after         INTEGER,                  -- end of grace; NULL for the current generation
    PRIMARY KEY (key_id, generation)
);

CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    key_id     TEXT,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL,                   -- JSON object
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_log_key_id ON audit_log (key_id, seq);

-- One row: the chain's head. Every write transaction updates it first, which serializes writers.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE replication_outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id        TEXT NOT NULL,
    record        TEXT NOT NULL,                -- the KeyRecord as JSON; its seq is this row's seq
    created_at    INTEGER NOT NULL,
    delivered_at  INTEGER
);

CREATE TABLE kms_rewrap_runs (
    id              INTEGER PRIMARY KEY,
    target_version  INTEGER NOT NULL,
    kms_key_id      TEXT NOT NULL,
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
