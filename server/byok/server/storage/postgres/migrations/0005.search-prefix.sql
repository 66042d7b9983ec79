-- depends: 0004.workspace
-- Schema version 0005 is SQLite's prefix index for `word*` searches. PostgreSQL needs no
-- change: the GIN index on search_tsv already answers prefix queries (`word:*`) by a
-- partial match over its sorted terms. This step keeps the version numbers of the two
-- backends the same, so a version means one schema everywhere (`db status`, `db copy`).
COMMENT ON INDEX messages_search_index IS
    'full-text search: words, phrases and prefixes (word:* is a partial match here)';
