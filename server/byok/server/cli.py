"""`byok-server`: serve, and manage the database schema."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from byok.server import app as app_module
from byok.server.config import Settings, SettingsError, load_settings
from byok.server.storage import migrations

cli = typer.Typer(
    name="byok-server",
    help="byok: a bring-your-own-key LLM gateway with persistent context threads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")

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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command()
def serve(grpc_addr: GrpcAddr = None, http_addr: HttpAddr = None, data_dir: DataDir = None) -> None:
    """Serve the gRPC API and the HTTP side until SIGTERM or Ctrl-C."""
    settings = _settings(grpc_addr=grpc_addr, http_addr=http_addr, data_dir=data_dir)
    _setup_logging(settings.log_level)
    try:
        asyncio.run(app_module.App(settings).serve_until_signal())
    except OSError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        pass


def _db_url(data_dir: Path | None) -> str:
    settings = _settings(data_dir=data_dir)
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
