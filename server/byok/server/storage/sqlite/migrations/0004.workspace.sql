-- depends: 0002.conversations
-- Workspaces: model profiles (named presets over a route), spaces that group
-- conversations and profiles, and the links between them. Every row belongs to a user;
-- `seq` is the physical (creation) order and the paging cursor, `id` the public id.
CREATE TABLE model_profiles (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    display_name  TEXT NOT NULL DEFAULT '',
    description   TEXT NOT NULL DEFAULT '',
    model_key     TEXT NOT NULL,
    params        TEXT NOT NULL DEFAULT '{}',  -- JSON: the set GenerationParams fields
    create_time   INTEGER NOT NULL,            -- microseconds since the Unix epoch, UTC
    update_time   INTEGER NOT NULL,
    revision      INTEGER NOT NULL DEFAULT 1,
    request_id    TEXT
);
CREATE INDEX model_profiles_by_user ON model_profiles(user_id, seq DESC);
CREATE UNIQUE INDEX model_profiles_by_request ON model_profiles(user_id, request_id)
    WHERE request_id IS NOT NULL;

CREATE TABLE spaces (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE,
    user_id             TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    display_name        TEXT NOT NULL,
    description         TEXT NOT NULL DEFAULT '',
    -- Always one of the space's linked profiles (the store keeps it so); NULL = none.
    default_profile_id  TEXT REFERENCES model_profiles(id) ON DELETE SET NULL,
    create_time         INTEGER NOT NULL,
    update_time         INTEGER NOT NULL,
    revision            INTEGER NOT NULL DEFAULT 1,
    request_id          TEXT
);
CREATE INDEX spaces_by_user ON spaces(user_id, seq DESC);
CREATE UNIQUE INDEX spaces_by_request ON spaces(user_id, request_id)
    WHERE request_id IS NOT NULL;

CREATE TABLE space_profiles (
    space_seq    INTEGER NOT NULL REFERENCES spaces(seq) ON DELETE CASCADE,
    profile_seq  INTEGER NOT NULL REFERENCES model_profiles(seq) ON DELETE CASCADE,
    link_time    INTEGER NOT NULL,
    PRIMARY KEY (space_seq, profile_seq)
);
CREATE INDEX space_profiles_by_profile ON space_profiles(profile_seq);
