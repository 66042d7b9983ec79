-- depends: 0001.users
-- Conversations (context threads) and their messages, in separate tables so a long
-- thread never slows down the others. `seq` is the physical order (and the paging key);
-- `id` is the public, UUIDv7 or caller-chosen id. Same columns as on SQLite; booleans
-- are BOOLEAN and metadata is JSONB.
CREATE TABLE conversations (
    seq               BIGSERIAL PRIMARY KEY,
    id                TEXT NOT NULL CONSTRAINT conversations_id_unique UNIQUE,
    user_id           TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title             TEXT NOT NULL DEFAULT '',
    metadata          JSONB NOT NULL DEFAULT '{}',
    space_id          TEXT NOT NULL DEFAULT '',
    pinned            BOOLEAN NOT NULL DEFAULT FALSE,
    archived          BOOLEAN NOT NULL DEFAULT FALSE,
    last_model        TEXT NOT NULL DEFAULT '',
    message_count     BIGINT NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    create_time       BIGINT NOT NULL,
    update_time       BIGINT NOT NULL,
    revision          BIGINT NOT NULL DEFAULT 1,
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

-- Full-text search: every message carries one tsvector of its content (weight A)
-- followed by its thread's title (weight B), so a search is one GIN index scan on one
-- table however many threads match by title. A title change rewrites the vectors of
-- that thread's messages (the trigger below re-uses the content part, it does not parse
-- the content again): titles change rarely, searches are frequent. The 'simple'
-- configuration lower-cases and never stems or drops stop words, like FTS5's unicode61.
--
-- The content and title parts are one position apart, so a phrase never spans them.
CREATE FUNCTION messages_search_retitle(doc tsvector, title text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ts_delete(
        ts_filter(doc, '{a}') || ''' '':1'::tsvector
            || setweight(to_tsvector('simple', title), 'B'),
        ' ')
$$;

-- A tsvector holds at most 1 MiB. A message (up to 1 MiB of text) whose vector would not
-- fit is indexed by its first 64 Ki characters instead of failing the write.
CREATE FUNCTION messages_search_vector(content text, title text) RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF octet_length(content) <= 262144 THEN
        RETURN messages_search_retitle(setweight(to_tsvector('simple', content), 'A'), title);
    END IF;
    BEGIN
        RETURN messages_search_retitle(setweight(to_tsvector('simple', content), 'A'), title);
    EXCEPTION WHEN program_limit_exceeded THEN
        RETURN messages_search_retitle(
            setweight(to_tsvector('simple', left(content, 65536)), 'A'), title);
    END;
END
$$;

CREATE TABLE messages (
    seq               BIGSERIAL PRIMARY KEY,
    id                TEXT NOT NULL CONSTRAINT messages_id_unique UNIQUE,
    conversation_seq  BIGINT NOT NULL REFERENCES conversations(seq) ON DELETE CASCADE,
    role              SMALLINT NOT NULL,
    content           TEXT NOT NULL,
    status            SMALLINT NOT NULL DEFAULT 1,
    incomplete_reason TEXT NOT NULL DEFAULT '',
    model             TEXT NOT NULL DEFAULT '',
    route             TEXT NOT NULL DEFAULT '',
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    latency_us        BIGINT NOT NULL DEFAULT 0,
    ttft_us           BIGINT NOT NULL DEFAULT 0,
    finish_reason     TEXT NOT NULL DEFAULT '',
    metadata          JSONB NOT NULL DEFAULT '{}',
    create_time       BIGINT NOT NULL,
    update_time       BIGINT NOT NULL,
    revision          BIGINT NOT NULL DEFAULT 1,
    request_id        TEXT,
    search_tsv        TSVECTOR NOT NULL  -- set by the messages_search trigger
);
CREATE INDEX messages_by_conversation ON messages(conversation_seq, seq);
CREATE UNIQUE INDEX messages_by_request ON messages(conversation_seq, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX messages_search_index ON messages USING GIN (search_tsv);
-- "Newest matches first" is ORDER BY seq DESC LIMIT n: the planner walks seq backwards
-- for words it knows are common and reads the GIN index for the others. A word missing
-- from the column's most-common list is guessed at about half the rarest listed one;
-- the default list (100 x 10 lexemes) is too short, and a rare or absent word then
-- walks the whole table. 1000 keeps ~10k lexemes (ANALYZE samples more rows for it).
ALTER TABLE messages ALTER COLUMN search_tsv SET STATISTICS 1000;

-- Triggers keep the vectors in step on every write path (API, chat, import, by hand).
CREATE FUNCTION messages_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.search_tsv := messages_search_vector(
        NEW.content,
        COALESCE((SELECT title FROM conversations WHERE seq = NEW.conversation_seq), ''));
    RETURN NEW;
END
$$;
CREATE TRIGGER messages_search BEFORE INSERT OR UPDATE OF content ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_search();

CREATE FUNCTION conversations_title_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE messages SET search_tsv = messages_search_retitle(search_tsv, NEW.title)
    WHERE conversation_seq = NEW.seq;
    RETURN NULL;
END
$$;
CREATE TRIGGER conversations_title_search AFTER UPDATE OF title ON conversations
    FOR EACH ROW WHEN (OLD.title IS DISTINCT FROM NEW.title)
    EXECUTE FUNCTION conversations_title_search();
