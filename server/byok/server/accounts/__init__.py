"""Users, their API keys, and the provider keys they bring."""
