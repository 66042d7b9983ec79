"""`.env.example` documents every variable byok reads."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

from byok.server.config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
ROUTING = [
    "MODEL_ROUTE_",
    "DEFAULT_MODEL_ROUTE",
    "ALLOWED_MODELS",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "PROVIDER_",
    "CONNECT_TIMEOUT_SECONDS",
    "READ_TIMEOUT_SECONDS",
    "WRITE_TIMEOUT_SECONDS",
    "TOTAL_TIMEOUT_SECONDS",
    "MAX_RETRIES",
]


def test_every_setting_is_in_env_example() -> None:
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    names = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices)
        names.append(str(alias.choices[0]))
    missing = [n for n in names if n not in documented]
    assert not missing, f"add to .env.example: {missing}"
    for prefix in ROUTING:
        assert prefix in text, prefix
