-- depends: 0001.users
-- Conversations (context threads) and their messages, in separate tables so a long
-- thread never slows down the others. `seq` is the physical order (and the FTS rowid);
-- `id` is the public, UUIDv7 or caller-chosen id.
CREATE TABLE conversations (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    user_id           TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title             TEXT NOT NULL DEFAULT '',
    metadata          TEXT NOT NULL DEFAULT '{}',
    space_id          TEXT NOT NULL DEFAULT '',
    pinned            INTEGER NOT NULL DEFAULT 0,
    archived          INTEGER NOT NULL DEFAULT 0,
    last_model        TEXT NOT NULL DEFAULT '',
    message_count     INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    create_time       INTEGER NOT NULL,
    update_time       INTEGER NOT NULL,
    revision          INTEGER NOT NULL DEFAULT 1,
    request_id        TEXT,
    source_key        TEXT
);
CREATE INDEX conversations_by_update ON conversations(user_id, update_time DESC, seq DESC);
CREATE INDEX conversations_by_create ON conversations(user_id, create_time DESC, seq DESC);
CREATE INDEX conversations_by_space ON conversations(user_id, space_id, update_time DESC);
CREATE UNIQUE INDEX conversations_by_request ON conversations(user_id, request_id)
    WHERE request_id IS NOT NULL;
CREATE UNIQUE INDEX conversations_by_source ON conversations(user_id, source_key)
    WHERE source_key IS NOT NULL;

CREATE TABLE messages (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    conversation_seq  INTEGER NOT NULL REFERENCES conversations(seq) ON DELETE CASCADE,
    role              INTEGER NOT NULL,
    content           TEXT NOT NULL,
    status            INTEGER NOT NULL DEFAULT 1,
    incomplete_reason TEXT NOT NULL DEFAULT '',
    model             TEXT NOT NULL DEFAULT '',
    route             TEXT NOT NULL DEFAULT '',
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_us        INTEGER NOT NULL DEFAULT 0,
    ttft_us           INTEGER NOT NULL DEFAULT 0,
    finish_reason     TEXT NOT NULL DEFAULT '',
    metadata          TEXT NOT NULL DEFAULT '{}',
    create_time       INTEGER NOT NULL,
    update_time       INTEGER NOT NULL,
    revision          INTEGER NOT NULL DEFAULT 1,
    request_id        TEXT
);
CREATE INDEX messages_by_conversation ON messages(conversation_seq, seq);
CREATE UNIQUE INDEX messages_by_request ON messages(conversation_seq, request_id)
    WHERE request_id IS NOT NULL;

-- Full-text search over message content and the thread's title: one external-content
-- FTS5 index whose rows are messages (rowid = messages.seq), read through a view. Triggers
-- keep it in step on every write path (API, chat, import, deletes), so a search hit is
-- always a message and pages by one keyset.
CREATE VIEW messages_search_docs AS
    SELECT m.seq AS seq, m.content AS content, c.title AS title
    FROM messages m JOIN conversations c ON c.seq = m.conversation_seq;

CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, title,
    content='messages_search_docs', content_rowid='seq',
    tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content, title)
    VALUES (new.seq, new.content, (SELECT title FROM conversations WHERE seq = new.conversation_seq));
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, title)
    VALUES ('delete', old.seq, old.content,
            (SELECT title FROM conversations WHERE seq = old.conversation_seq));
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, title)
    VALUES ('delete', old.seq, old.content,
            (SELECT title FROM conversations WHERE seq = old.conversation_seq));
    INSERT INTO messages_fts(rowid, content, title)
    VALUES (new.seq, new.content, (SELECT title FROM conversations WHERE seq = new.conversation_seq));
END;
CREATE TRIGGER conversations_title_fts AFTER UPDATE OF title ON conversations BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, title)
    SELECT 'delete', seq, content, old.title FROM messages WHERE conversation_seq = new.seq;
    INSERT INTO messages_fts(rowid, content, title)
    SELECT seq, content, new.title FROM messages WHERE conversation_seq = new.seq;
END;
-- Messages go before their conversation, while its title is still there for the
-- index's 'delete' (a cascade would run after the title is gone).
CREATE TRIGGER conversations_delete_messages BEFORE DELETE ON conversations BEGIN
    DELETE FROM messages WHERE conversation_seq = old.seq;
END;

-- The index is (re)built from the tables by a migration, never by hand.
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
