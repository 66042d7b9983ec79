-- Users: every resource belongs to one. `local` is the implicit user of local mode.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL DEFAULT '',
    disabled      INTEGER NOT NULL DEFAULT 0,
    create_time   INTEGER NOT NULL  -- microseconds since the Unix epoch, UTC
);

INSERT INTO users (id, name, display_name, create_time)
VALUES ('local', 'local', 'Local user', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
