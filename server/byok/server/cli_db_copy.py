"""`byok-server db copy --from <sqlite file> --to <postgresql URL>` (see storage/copy.py).

Registered on the `db` group in cli.py: `db_cli.command("copy")(db_copy)`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated, TextIO

import asyncpg
import typer

from byok.server.storage.copy import CopyError, Progress, copy_database

FromPath = Annotated[
    Path,
    typer.Option(
        "--from",
        help="The SQLite database file to copy (byok.db in the data folder)",
        show_default=False,
    ),
]
ToUrl = Annotated[
    str,
    typer.Option(
        "--to",
        envvar="BYOK_DATABASE_URL",
        help="The PostgreSQL URL to copy into",
        show_default=False,
        show_envvar=True,
    ),
]
Batch = Annotated[int, typer.Option("--batch", min=1, max=100_000, help="Rows per transaction")]


class ProgressLine:
    """One line on stderr, rewritten in place on a terminal; elsewhere (a log) a line
    every `every` seconds and when a table is done."""

    def __init__(self, out: TextIO | None = None, every: float = 5.0) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.every = every
        self._last = float("-inf")

    def __call__(self, p: Progress) -> None:
        finished = p.done >= p.total
        now = time.monotonic()
        if not self.tty and not finished and now - self._last < self.every:
            return
        if self.tty and not finished and now - self._last < 0.1:
            return
        self._last = now
        percent = 100 * p.done / p.total if p.total else 100.0
        line = (
            f"copying {p.table}: {p.done:,}/{p.total:,} rows ({percent:.0f}%), {p.rate:,.0f} rows/s"
        )
        if self.tty:
            self.out.write(f"\r\x1b[2K{line}" + ("\n" if finished else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


def counts_table(counts: dict[str, tuple[int, int]]) -> str:
    width = max(len("table"), *(len(t) for t in counts))
    lines = [f"{'table':<{width}}  {'source':>10}  {'target':>10}"]
    for table, (source, target) in counts.items():
        mark = "" if source == target else "  MISMATCH"
        lines.append(f"{table:<{width}}  {source:>10,}  {target:>10,}{mark}")
    return "\n".join(lines)


def db_copy(source: FromPath, target: ToUrl, batch: Batch = 1000) -> None:
    """Copy every table of a SQLite database into PostgreSQL, resumably.

    Stop the server using the SQLite file first. Run it again after an interruption:
    it continues without duplicating rows. Ends with the row counts of both sides and
    exits 1 if any differ. Provider keys stay encrypted: keep the same BYOK_MASTER_KEY.
    """
    started = time.monotonic()
    try:
        counts = asyncio.run(copy_database(source, target, batch=batch, progress=ProgressLine()))
    except (CopyError, ValueError, OSError, asyncpg.PostgresError) as exc:
        typer.echo(f"byok-server: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("\nbyok-server: interrupted; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(counts_table(counts))
    rows = sum(source_rows for source_rows, _ in counts.values())
    bad = [table for table, (a, b) in counts.items() if a != b]
    if bad:
        typer.echo(
            f"byok-server: row counts differ for {', '.join(bad)}: was the SQLite database"
            " written during the copy, or did the target hold other rows?",
            err=True,
        )
        raise typer.Exit(1)
    took = time.monotonic() - started
    typer.echo(f"counts match: {rows:,} rows in both databases ({took:.1f}s)")
