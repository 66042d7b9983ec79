DROP TRIGGER conversations_title_search ON conversations;
DROP TRIGGER messages_search ON messages;
DROP FUNCTION conversations_title_search();
DROP FUNCTION messages_search();
DROP TABLE messages;
DROP TABLE conversations;
DROP FUNCTION messages_search_retitle(tsvector, text);
DROP FUNCTION messages_search_vector(text, text);
