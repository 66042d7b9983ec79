"""Chat: one turn of a conversation, from route to stored answer."""
