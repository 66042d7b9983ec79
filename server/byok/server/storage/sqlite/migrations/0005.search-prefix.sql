-- depends: 0004.workspace
-- Prefix indexes for `word*` searches. Without them FTS5 answers `but*` by merging the
-- doclist of every term that starts with "but" on each evaluation (~40 ms at 1M
-- messages, and once per row fetched for a page); with them a 2, 3 or 4 letter prefix is
-- one doclist read, like a word. Longer prefixes match few terms and stay cheap. The
-- cost is a larger index and costlier writes (see docs/performance.md).
-- Same table, same triggers (they name it and fire on the new one), rebuilt from the
-- messages.
DROP TABLE messages_fts;
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, title,
    content='messages_search_docs', content_rowid='seq',
    tokenize='unicode61 remove_diacritics 2',
    prefix='2 3 4'
);
-- Merge segments 8 at a time instead of FTS5's 4: each entry is rewritten by fewer merge
-- levels, which buys back ~24% of the write cost the prefix indexes add, for reads that
-- visit a few more segments.
INSERT INTO messages_fts(messages_fts, rank) VALUES ('automerge', 8);
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
