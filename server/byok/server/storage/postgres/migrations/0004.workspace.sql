-- depends: 0002.conversations
-- Workspaces: model profiles (named presets over a route), spaces that group
-- conversations and profiles, and the links between them. Every row belongs to a user;
-- `seq` is the physical (creation) order and the paging cursor, `id` the public id.
-- Same tables and columns as on SQLite; params is JSONB. The store takes a per-user
-- advisory lock for every workspace write (postgres/base.py, `_user_tx`).
CREATE TABLE model_profiles (
    seq           BIGSERIAL PRIMARY KEY,
    id            TEXT NOT NULL CONSTRAINT model_profiles_id_unique UNIQUE,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    display_name  TEXT NOT NULL DEFAULT '',
    description   TEXT NOT NULL DEFAULT '',
    model_key     TEXT NOT NULL,
    params        JSONB NOT NULL DEFAULT '{}',  -- the set GenerationParams fields
    create_time   BIGINT NOT NULL,              -- microseconds since the Unix epoch, UTC
    update_time   BIGINT NOT NULL,
    revision      BIGINT NOT NULL DEFAULT 1,
    request_id    TEXT
);
CREATE INDEX model_profiles_by_user ON model_profiles(user_id, seq DESC);
CREATE UNIQUE INDEX model_profiles_by_request ON model_profiles(user_id, request_id)
    WHERE request_id IS NOT NULL;

CREATE TABLE spaces (
    seq                 BIGSERIAL PRIMARY KEY,
    id                  TEXT NOT NULL CONSTRAINT spaces_id_unique UNIQUE,
    user_id             TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    display_name        TEXT NOT NULL,
    description         TEXT NOT NULL DEFAULT '',
    -- Always one of the space's linked profiles (the store keeps it so); NULL = none.
    default_profile_id  TEXT REFERENCES model_profiles(id) ON DELETE SET NULL,
    create_time         BIGINT NOT NULL,
    update_time         BIGINT NOT NULL,
    revision            BIGINT NOT NULL DEFAULT 1,
    request_id          TEXT
);
CREATE INDEX spaces_by_user ON spaces(user_id, seq DESC);
CREATE UNIQUE INDEX spaces_by_request ON spaces(user_id, request_id)
    WHERE request_id IS NOT NULL;
-- The foreign key's own index: deleting a profile finds the spaces defaulting to it.
CREATE INDEX spaces_by_default_profile ON spaces(default_profile_id)
    WHERE default_profile_id IS NOT NULL;

CREATE TABLE space_profiles (
    space_seq    BIGINT NOT NULL REFERENCES spaces(seq) ON DELETE CASCADE,
    profile_seq  BIGINT NOT NULL REFERENCES model_profiles(seq) ON DELETE CASCADE,
    link_time    BIGINT NOT NULL,
    PRIMARY KEY (space_seq, profile_seq)
);
CREATE INDEX space_profiles_by_profile ON space_profiles(profile_seq);
