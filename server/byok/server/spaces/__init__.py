"""Spaces: workspaces that group conversations and model profiles."""
