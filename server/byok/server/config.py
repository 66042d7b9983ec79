"""All of byok's settings, in one typed object read from the environment and `.env`.

Nothing else in the server reads `os.environ`: the composition root builds a
`Settings` once and hands the parts each component needs. An invalid value stops the
start with one line that names the variable (`SettingsError`), never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import platformdirs
from dotenv import dotenv_values
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from byok.server.accounts.provider_keys import parse_master_key
from byok.server.eventloop import EVENT_LOOPS
from byok.server.models.routing import RoutingConfig, parse_routing


class SettingsError(Exception):
    """A setting is invalid; the message is one line fit for a person."""


@dataclass(frozen=True)
class Address:
    """A host and a port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(value: str) -> Address:
    """Parses `host:port` or `[v6]:port`; port 0 asks the OS for a free port."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{value!r} is not host:port (IPv6 hosts go in brackets: [::1]:50051)")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:50051")
    if not host:
        raise ValueError(f"{value!r} has no host, e.g. 127.0.0.1:50051")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} has no valid port (0-65535)")
    return Address(host, int(port_text))


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("byok", appauthor=False))


class Settings(BaseSettings):
    """byok's configuration. `.env.example` documents every variable."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    grpc_addr: Annotated[Address, NoDecode] = Field(
        default=Address("127.0.0.1", 50051), validation_alias=AliasChoices("BYOK_GRPC_ADDR")
    )
    http_addr: Annotated[Address, NoDecode] = Field(
        default=Address("127.0.0.1", 8080), validation_alias=AliasChoices("BYOK_HTTP_ADDR")
    )
    data_dir: Path = Field(
        default_factory=default_data_dir, validation_alias=AliasChoices("BYOK_DATA_DIR")
    )
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("BYOK_DATABASE_URL"), repr=False
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, le=3600, validation_alias=AliasChoices("BYOK_SHUTDOWN_GRACE_SECONDS")
    )
    sqlite_busy_timeout_ms: int = Field(
        default=5000, ge=0, le=600_000, validation_alias=AliasChoices("BYOK_SQLITE_BUSY_TIMEOUT_MS")
    )
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("BYOK_LOG_LEVEL"))
    search_window: int = Field(
        default=300, ge=20, le=100_000, validation_alias=AliasChoices("BYOK_SEARCH_WINDOW")
    )
    context_token_budget: int = Field(
        default=6000, ge=256, le=2_000_000, validation_alias=AliasChoices("CONTEXT_TOKEN_BUDGET")
    )
    local_model_threads: int = Field(
        default=1, ge=1, le=256, validation_alias=AliasChoices("LOCAL_MODEL_THREADS")
    )
    local_model_path: Path | None = Field(
        default=None, validation_alias=AliasChoices("LOCAL_MODEL_PATH")
    )
    local_model_context: int = Field(
        default=2048, ge=256, le=131_072, validation_alias=AliasChoices("LOCAL_MODEL_CONTEXT")
    )

    # Metrics are always on in production; off exists so bench/chat_overhead.py can show
    # what they cost in the same run.
    metrics_enabled: bool = Field(default=True, validation_alias=AliasChoices("BYOK_METRICS"))
    sse_heartbeat_seconds: float = Field(
        default=15.0, gt=0, le=3600, validation_alias=AliasChoices("SSE_HEARTBEAT_SECONDS")
    )
    log_format: str = Field(default="auto", validation_alias=AliasChoices("BYOK_LOG_FORMAT"))
    event_loop: str = Field(default="auto", validation_alias=AliasChoices("BYOK_EVENT_LOOP"))
    log_content: bool = Field(default=False, validation_alias=AliasChoices("LOG_CONTENT"))
    rate_limit_per_min: int = Field(
        default=0, ge=0, le=1_000_000, validation_alias=AliasChoices("RATE_LIMIT_PER_MIN")
    )
    token_limit_per_min: int = Field(
        default=0, ge=0, le=10**9, validation_alias=AliasChoices("TOKEN_LIMIT_PER_MIN")
    )
    max_streams_per_user: int = Field(
        default=16, ge=0, le=100_000, validation_alias=AliasChoices("MAX_STREAMS_PER_USER")
    )
    use_redis: bool = Field(default=False, validation_alias=AliasChoices("USE_REDIS"))
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=AliasChoices("REDIS_URL"),
        repr=False,
    )
    redis_timeout_seconds: float = Field(
        default=0.25, gt=0, le=30, validation_alias=AliasChoices("REDIS_TIMEOUT_SECONDS")
    )
    rate_limit_fail_open: bool = Field(
        default=True, validation_alias=AliasChoices("RATE_LIMIT_FAIL_OPEN")
    )
    auth_mode: str = Field(default="local", validation_alias=AliasChoices("AUTH_MODE"))
    allow_insecure: bool = Field(default=False, validation_alias=AliasChoices("ALLOW_INSECURE"))
    tls_cert: Path | None = Field(default=None, validation_alias=AliasChoices("BYOK_TLS_CERT"))
    tls_key: Path | None = Field(default=None, validation_alias=AliasChoices("BYOK_TLS_KEY"))
    master_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("BYOK_MASTER_KEY"), repr=False
    )

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        fmt = value.strip().lower()
        if fmt not in {"auto", "json", "text"}:
            raise ValueError(f"{value!r} is not auto, json or text")
        return fmt

    @field_validator("event_loop")
    @classmethod
    def _event_loop(cls, value: str) -> str:
        choice = value.strip().lower()
        if choice not in EVENT_LOOPS:
            raise ValueError(f"{value!r} is not {', '.join(EVENT_LOOPS[:-1])} or {EVENT_LOOPS[-1]}")
        return choice

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        url = urlsplit(value.get_secret_value())
        if url.scheme not in {"postgresql", "postgres", "postgresql+psycopg"} or not url.path:
            # never echo the value: it may hold a password
            raise ValueError("must be a postgresql://user@host:port/database URL (or unset)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr) -> SecretStr:
        url = urlsplit(value.get_secret_value())
        if url.scheme not in {"redis", "rediss", "unix"} or not (url.hostname or url.path):
            # never echo the value: it may hold a password
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("auth_mode")
    @classmethod
    def _auth_mode(cls, value: str) -> str:
        mode = value.strip().lower()
        if mode not in {"local", "keys"}:
            raise ValueError(f"{value!r} is not local or keys")
        return mode

    @field_validator("master_key")
    @classmethod
    def _master_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            parse_master_key(value.get_secret_value())  # raises ValueError naming the problem
            return value
        return None

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a readable file")
        return value

    @model_validator(mode="after")
    def _safe_exposure(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("BYOK_TLS_CERT and BYOK_TLS_KEY go together: set both or neither")
        exposed = [
            f"{name}={addr}"
            for name, addr in (
                ("BYOK_GRPC_ADDR", self.grpc_addr),
                ("BYOK_HTTP_ADDR", self.http_addr),
            )
            if not addr.is_loopback
        ]
        if exposed and self.auth_mode == "local":
            raise ValueError(
                "AUTH_MODE=local serves everyone as the implicit local user, so it listens "
                f"on loopback only, but {', '.join(exposed)} is not loopback: set "
                "AUTH_MODE=keys (create keys with `byok-server keys create`) or listen on 127.0.0.1"
            )
        if exposed and self.tls_cert is None and not self.allow_insecure:
            raise ValueError(
                f"{', '.join(exposed)} is not loopback and TLS is off: API keys would travel "
                "in clear text; set BYOK_TLS_CERT and BYOK_TLS_KEY, or ALLOW_INSECURE=true"
            )
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @field_validator("grpc_addr", "http_addr", mode="before")
    @classmethod
    def _address(cls, value: object) -> object:
        return parse_address(value) if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"{value!r} is not one of DEBUG, INFO, WARNING, ERROR")
        return level

    @property
    def database_path(self) -> Path:
        return self.data_dir / "byok.db"


_ALIASES = {
    name: (
        field.validation_alias.choices[0]
        if isinstance(field.validation_alias, AliasChoices)
        else name.upper()
    )
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: Any) -> Settings:
    """Reads the settings; overrides (from CLI flags) win over the environment.

    Raises `SettingsError` with one line naming each bad variable.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            if not error["loc"]:  # a rule across settings: its message names them
                problems.append(message)
                continue
            field = str(error["loc"][0])
            variable = _ALIASES.get(field, field)
            problems.append(f"{variable}: {message}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None
    except _SourceError as exc:  # a value the source itself could not parse
        raise SettingsError(f"invalid setting: {exc}") from None


def load_environment() -> dict[str, str]:
    """The process environment over the values of `.env` (the environment wins)."""
    values = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    values.update(os.environ)
    return values


def load_routing(environ: Mapping[str, str] | None = None) -> RoutingConfig:
    """Model routes and providers (MODEL_ROUTE_<KEY>, PROVIDER_<P>_*, ...).

    Raises `SettingsError` with one line naming the bad variable.
    """
    try:
        return parse_routing(load_environment() if environ is None else environ)
    except ValueError as exc:
        raise SettingsError(f"invalid setting {exc}") from None
