DROP TABLE messages_fts;
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, title,
    content='messages_search_docs', content_rowid='seq',
    tokenize='unicode61 remove_diacritics 2'
);
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
