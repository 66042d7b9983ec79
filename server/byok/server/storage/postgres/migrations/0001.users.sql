-- Users: every resource belongs to one. `local` is the implicit user of local mode.
-- Times are BIGINT microseconds since the Unix epoch, UTC, as on SQLite, so the core
-- sees the same values from either backend.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL DEFAULT '',
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    create_time   BIGINT NOT NULL
);

INSERT INTO users (id, name, display_name, create_time)
VALUES ('local', 'local', 'Local user', (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT);
