-- depends: 0001.users
-- API keys (stored only as a SHA-256 of the key: keys are 256-bit random, so a fast
-- hash is enough) and users' own provider keys (AES-GCM ciphertext, never plaintext).
-- Same tables and columns as on SQLite; BLOBs are BYTEA, flags BOOLEAN.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name           TEXT NOT NULL DEFAULT '',
    prefix         TEXT NOT NULL,
    hash           TEXT NOT NULL CONSTRAINT api_keys_hash_unique UNIQUE,
    create_time    BIGINT NOT NULL,
    last_used_time BIGINT NOT NULL DEFAULT 0,
    revoked        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX api_keys_by_user ON api_keys(user_id);

CREATE TABLE provider_keys (
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    provider    TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    last4       TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (user_id, provider)
);
