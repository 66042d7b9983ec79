"""Models: the configured routes (route key -> provider and model) and the allowlist."""
