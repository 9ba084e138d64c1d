-- The ES256 keys that sign the origin's JWTs. The private scalar is sealed like an API key's secret:
-- AES-256-GCM under its own data key, which KMS wraps with an encryption context naming the kid and the
-- purpose. The public half is kept in the clear, so the JWKS is served without a KMS call.
CREATE TABLE origin_signing_keys (
    version           BIGINT PRIMARY KEY,          -- 1, 2, ...: higher is newer
    kid               TEXT NOT NULL UNIQUE,
    public_jwk        TEXT NOT NULL,            -- JSON (kty, crv, x, y, kid, alg, use)
    ciphertext        BYTEA NOT NULL,            -- nonce || AES-256-GCM(scalar) under the data key
    wrapped_data_key  BYTEA NOT NULL,
    kms_key_id        TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    activates_at      BIGINT NOT NULL              -- when edges start signing with it
);
