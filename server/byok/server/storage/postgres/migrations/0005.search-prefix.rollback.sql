COMMENT ON INDEX messages_search_index IS NULL;
