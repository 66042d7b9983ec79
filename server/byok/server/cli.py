"""`byok-server`: serve, and manage the database schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar, cast

import typer

from byok.server import app as app_module
from byok.server import eventloop
from byok.server.accounts.provider_keys import new_master_key
from byok.server.accounts.users import Accounts
from byok.server.cli_db_copy import db_copy
from byok.server.config import Settings, SettingsError, load_settings
from byok.server.errors import ByokError
from byok.server.observability import configure_logging
from byok.server.observability.logs import LogFormat
from byok.server.storage import migrations, open_store
from byok.server.storage.accounts import ApiKeyRecord

T = TypeVar("T")

cli = typer.Typer(
    name="byok-server",
    help="byok: a bring-your-own-key LLM gateway with persistent context threads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="Database schema migrations and copying.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
db_cli.command("copy")(db_copy)
users_cli = typer.Typer(help="Users (AUTH_MODE=keys).", no_args_is_help=True)
cli.add_typer(users_cli, name="users")
keys_cli = typer.Typer(
    help="API keys of users: shown once, stored as a hash.", no_args_is_help=True
)
cli.add_typer(keys_cli, name="keys")

GrpcAddr = Annotated[
    str | None, typer.Option("--grpc-addr", help="gRPC host:port [env BYOK_GRPC_ADDR]")
]
HttpAddr = Annotated[
    str | None, typer.Option("--http-addr", help="HTTP host:port [env BYOK_HTTP_ADDR]")
]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder [env BYOK_DATA_DIR]")]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"byok-server: {message}", err=True)
    raise typer.Exit(code)


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        _fail(str(exc))


@cli.command()
def serve(grpc_addr: GrpcAddr = None, http_addr: HttpAddr = None, data_dir: DataDir = None) -> None:
    """Serve the gRPC API and the HTTP side until SIGTERM or Ctrl-C."""
    settings = _settings(grpc_addr=grpc_addr, http_addr=http_addr, data_dir=data_dir)
    configure_logging(
        settings.log_level,
        cast(LogFormat, settings.log_format),
        log_content=settings.log_content,
    )
    try:
        factory = eventloop.loop_factory(settings.event_loop)
    except RuntimeError as exc:
        _fail(str(exc))
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(
                app_module.App(settings).serve_until_signal(started=eventloop.freeze_startup_heap)
            )
    except OSError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        pass


def _db_url(data_dir: Path | None) -> str:
    """BYOK_DATABASE_URL when set, else the SQLite file in the data folder."""
    settings = _settings(data_dir=data_dir)
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return migrations.sqlite_url(settings.database_path)


@db_cli.command("status")
def db_status(data_dir: DataDir = None) -> None:
    """Show each migration and whether it is applied."""
    for state in migrations.status(_db_url(data_dir)):
        typer.echo(f"{'applied' if state.applied else 'pending'}  {state.id}")


@db_cli.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply every pending migration."""
    applied = migrations.upgrade(_db_url(data_dir))
    typer.echo(
        f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
    )


@db_cli.command("downgrade")
def db_downgrade(
    to: Annotated[
        str | None,
        typer.Option("--to", help="Roll back every migration after this id; 'zero' for all."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Roll back the newest migration (or down to --to)."""
    try:
        rolled = migrations.downgrade(_db_url(data_dir), to=to)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(
        f"rolled back {len(rolled)} migration(s)" + (": " + ", ".join(rolled) if rolled else "")
    )


def main() -> None:
    cli()


# -- users and API keys ----------------------------------------------------------------

UserName = Annotated[str, typer.Argument(help="The user's name (a-z 0-9 _ . -).")]
JsonOut = Annotated[bool, typer.Option("--json", help="JSON output.")]


def _accounts(data_dir: Path | None, action: Callable[[Accounts], Awaitable[T]]) -> T:
    settings = _settings(data_dir=data_dir)

    async def run() -> T:
        store = await open_store(settings)
        try:
            return await action(Accounts(store))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except ByokError as exc:
        _fail(exc.message, 1)


def _when(us: int) -> str:
    if not us:
        return "-"
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@users_cli.command("create")
def users_create(
    name: UserName,
    display_name: Annotated[str, typer.Option("--display-name")] = "",
    data_dir: DataDir = None,
) -> None:
    """Create a user."""
    user = _accounts(data_dir, lambda a: a.create_user(name, display_name))
    typer.echo(f"created user {user.name} ({user.id})")


@users_cli.command("list")
def users_list(data_dir: DataDir = None, json_out: JsonOut = False) -> None:
    """List users."""
    users = _accounts(data_dir, lambda a: a.store.list_users())
    if json_out:
        rows = [
            {"id": u.id, "name": u.name, "display_name": u.display_name, "disabled": u.disabled}
            for u in users
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for u in users:
        state = "disabled" if u.disabled else "active"
        typer.echo(f"{u.name:<24} {state:<9} {_when(u.create_time_us)}  {u.id}")


@users_cli.command("disable")
def users_disable(name: UserName, data_dir: DataDir = None) -> None:
    """Disable a user: their keys stop working at once."""
    _accounts(data_dir, lambda a: a.set_disabled(name, True))
    typer.echo(f"disabled user {name}")


@users_cli.command("enable")
def users_enable(name: UserName, data_dir: DataDir = None) -> None:
    """Enable a disabled user again."""
    _accounts(data_dir, lambda a: a.set_disabled(name, False))
    typer.echo(f"enabled user {name}")


@keys_cli.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="Whose key.")],
    name: Annotated[str, typer.Option("--name", help="A label, e.g. the laptop it is for.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Create an API key. It is printed once: store it now (e.g. as BYOK_API_KEY)."""
    new = _accounts(data_dir, lambda a: a.create_key(user, name))
    typer.echo(new.key)
    typer.echo(f"created key {new.record.id} for {user}; it is shown only now", err=True)


@keys_cli.command("list")
def keys_list(
    user: Annotated[str, typer.Option("--user", help="Whose keys.")],
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """List a user's keys (their first characters only)."""

    async def action(a: Accounts) -> list[ApiKeyRecord]:
        return await a.store.list_api_keys((await a.user(user)).id)

    keys = _accounts(data_dir, action)
    if json_out:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "revoked": k.revoked,
                "create_time": _when(k.create_time_us),
            }
            for k in keys
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for k in keys:
        state = "revoked" if k.revoked else "active"
        typer.echo(f"{k.id}  {k.prefix}…  {state:<8} {_when(k.create_time_us)}  {k.name}")


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id.")], data_dir: DataDir = None
) -> None:
    """Revoke a key: it stops working at once."""
    if not _accounts(data_dir, lambda a: a.store.revoke_api_key(key_id)):
        _fail(f"no key with id {key_id!r}", 1)
    typer.echo(f"revoked key {key_id}")


@cli.command("master-key")
def master_key() -> None:
    """Print a new random BYOK_MASTER_KEY (for encrypting users' provider keys)."""
    typer.echo(new_master_key())
