"""Storage benchmark: the store at 10,000 threads / 1,000,000 messages, SQLite or PostgreSQL.

Run by hand (not part of the test suite):

    .venv/bin/python bench/storage.py [--backend sqlite|postgres] [--threads 10000]
        [--messages 1000000] [--db PATH | --database-url URL] [--keep] [--json FILE]

Builds the data set through the production write path (`SqliteStore.open` or
`PostgresStore.open`, so the migrations run; `Conversations.create`; batched
`append_messages`, one transaction per thread; the FTS5 triggers or the tsvector trigger
and GIN index maintain the search index exactly as in production), then measures the
read and write paths through the `Conversations` core and prints p50/p99 against the
targets in docs/performance.md.

With `--db PATH` (SQLite) or `--database-url URL` (PostgreSQL) pointing at a database an
earlier run built, the build is skipped and the same corpus statistics are recomputed
from the fixed-seed generator, so the measurements can be repeated quickly.

PostgreSQL without `--database-url`: a new database `byok_bench_<hex>` is created on the
server of `BYOK_BENCH_POSTGRES` (default postgresql://postgres@127.0.0.1:5432/postgres)
and dropped at the end unless `--keep`. The same queries run on both backends (the
store's PostgreSQL parser reads the FTS5 word, "phrase" and prefix* forms the mix uses);
the LIKE baseline becomes ILIKE (SQLite's LIKE is case-insensitive for ASCII) and the
naive bm25 line becomes ts_rank_cd over every match.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiosqlite
import asyncpg

from byok.server.conversations.model import Message, Role, Usage
from byok.server.conversations.service import SEARCH_WINDOW, Conversations
from byok.server.ids import new_id
from byok.server.storage.base import DEFAULT_USER_ID
from byok.server.storage.postgres.store import PostgresStore, asyncpg_dsn, parse_search_query
from byok.server.storage.sqlite.store import SqliteStore

USER = DEFAULT_USER_ID
SEED = 20240601
VOCAB = 100_000
# Zipf-Mandelbrot weights 1/(rank + 1 + Q): with ~40 words a message the top word is
# in about half the messages, ranks ~70-300 in 1-5 %, ranks ~40,000 in ~0.01 %.
ZIPF_Q = 4.0
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwxyz" for v in "aeiou"]

TARGETS = {  # name -> (kind, limit); "p99" means p99 latency <= limit ms
    "list": ("p99", 5.0),
    "get": ("p99", 10.0),
    "search": ("p99", 20.0),
    "append": ("rate", 5_000.0),
}
ORDERS = {"relevance": "", "newest": "create_time desc"}
BUDGET_S = 90.0  # per measurement; slow ones stop early with fewer samples
MIN_SAMPLES = 30
STRESS = "prefix-2"  # query class measured but kept out of the overall mix
POSTGRES_SERVER = os.environ.get(
    "BYOK_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)  # where temporary PostgreSQL databases are created
# The ranking PostgresStore.search_rank uses (content A 1.0, title B 0.3, normalization 1).
PG_RANK = "ts_rank_cd('{0.1, 0.2, 0.3, 1.0}'::float4[], search_tsv, q, 1)"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# -- corpus -----------------------------------------------------------------------------


def spell(code: int) -> str:
    """A made-up word: `code` in base 100, one consonant-vowel syllable per digit."""
    out = []
    while code:
        code, digit = divmod(code, 100)
        out.append(SYLLABLES[digit])
    return "".join(reversed(out))


class Corpus:
    """Fixed-seed message text: Zipf-like words, no punctuation (so a LIKE on
    ' ' || content || ' ' with '% word %' finds exactly what FTS finds)."""

    def __init__(self, seed: int, messages_per_thread: int, stream: int = 1):
        rng = random.Random(seed)
        codes = list(range(100, 100 + VOCAB))  # 2-3 syllables, all distinct
        rng.shuffle(codes)
        self.words = [spell(c) for c in codes]  # words[rank]
        self.cum_weights = list(itertools.accumulate(1.0 / (r + 1 + ZIPF_Q) for r in range(VOCAB)))
        self.ranks = range(VOCAB)
        self.rng = random.Random(seed + stream)  # same words, another text stream
        self.per_thread = messages_per_thread
        self.df = [0] * VOCAB  # messages containing each rank
        self.total = 0
        self.samples: list[list[int]] = []  # a few messages, for phrase queries

    def thread(self) -> list[tuple[Role, str, int]]:
        """The next thread's messages: (role, text, word count), user/assistant alternating."""
        out = []
        rng, df = self.rng, self.df
        for i in range(self.per_thread):
            user = i % 2 == 0
            length = rng.randint(10, 40) if user else rng.randint(30, 80)
            ranks = rng.choices(self.ranks, cum_weights=self.cum_weights, k=length)
            for r in set(ranks):
                df[r] += 1
            if self.total % 99_991 == 7:
                self.samples.append(ranks)
            self.total += 1
            words = self.words
            out.append(
                (Role.USER if user else Role.ASSISTANT, " ".join(words[r] for r in ranks), length)
            )
        return out


@dataclass
class Query:
    cls: str
    text: str  # search query (FTS5 syntax; PostgresStore parses the same forms)
    like: str  # equivalent pattern for ' ' || content || ' ' LIKE ? (ILIKE on PostgreSQL)
    matches: int = 0


def closest(df: list[int], total: int, fraction: float, exclude: set[int]) -> int:
    goal = fraction * total
    return min((r for r in range(VOCAB) if r not in exclude), key=lambda r: abs(df[r] - goal))


def choose_queries(corpus: Corpus) -> list[Query]:
    """The query mix, picked by measured document frequency."""
    df, total, w = corpus.df, corpus.total, corpus.words
    used: set[int] = set()

    def pick(fraction: float) -> int:
        rank = closest(df, total, fraction, used)
        used.add(rank)
        return rank

    def word(rank: int, cls: str) -> Query:
        return Query(cls, w[rank], f"% {w[rank]} %")

    queries = [word(0, "common")]
    used.update({0, 1})
    medium = [pick(f) for f in (0.01, 0.02, 0.03, 0.04, 0.05)]
    rare = [pick(0.0001) for _ in range(5)]
    queries += [word(r, "medium") for r in medium]
    queries += [word(r, "rare") for r in rare]

    def phrase(ranks: Sequence[int]) -> Query:
        text = " ".join(w[r] for r in ranks)
        return Query("phrase", f'"{text}"', f"% {text} %")

    queries.append(phrase([0, 1]))  # two very common words, adjacent
    s = corpus.samples
    queries.append(phrase(s[0][3:5]))
    queries.append(phrase(s[1 % len(s)][5:8]))
    # a bigram of two medium-frequency words from a sampled message
    for sample in s[2:]:
        pairs = [
            sample[i : i + 2]
            for i in range(len(sample) - 1)
            if all(70 <= r <= 400 for r in sample[i : i + 2])
        ]
        if pairs:
            queries.append(phrase(pairs[0]))
            break

    def prefix(text: str) -> Query:
        return Query("prefix", f"{text}*", f"% {text}%")

    queries += [
        prefix(w[medium[0]][:3]),
        prefix(w[medium[2]][:4]),
        prefix(w[rare[0]][:4]),
        prefix(w[rare[1]][:5]),
    ]
    # Stress, outside the mix: a two-letter prefix expands to thousands of terms.
    broad = prefix(w[medium[0]][:2])
    broad.cls = STRESS
    queries.append(broad)
    return queries


# -- measurement ------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Result:
    name: str
    samples: list[float] = field(default_factory=list)  # ms
    target: str = ""  # key into TARGETS, "" for information only
    rate: float | None = None  # messages/s, for throughput lines
    note: str = ""
    cpu: list[float] = field(default_factory=list)  # process CPU ms of each sample

    @property
    def p50(self) -> float:
        return percentile(self.samples, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 0.99)

    def cpu_text(self, q: float) -> str:
        return f"{percentile(self.cpu, q):.2f}" if self.cpu else "-"

    def verdict(self) -> str:
        if not self.target:
            return ""
        kind, limit = TARGETS[self.target]
        if kind == "rate":
            return "PASS" if (self.rate or 0) >= limit else "MISS"
        return "PASS" if self.p99 <= limit else "MISS"

    def target_text(self) -> str:
        if not self.target:
            return ""
        kind, limit = TARGETS[self.target]
        return f">= {limit:,.0f} msg/s" if kind == "rate" else f"p99 <= {limit:g} ms"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "n": len(self.samples)}
        if self.samples:
            out |= {
                "p50_ms": round(self.p50, 3),
                "p99_ms": round(self.p99, 3),
                "mean_ms": round(sum(self.samples) / len(self.samples), 3),
                "max_ms": round(max(self.samples), 3),
                "samples_ms": [round(s, 3) for s in self.samples],
            }
        if self.cpu:
            out |= {
                "cpu_p50_ms": round(percentile(self.cpu, 0.5), 3),
                "cpu_p99_ms": round(percentile(self.cpu, 0.99), 3),
                "cpu_samples_ms": [round(s, 3) for s in self.cpu],
            }
        if self.rate is not None:
            out["messages_per_s"] = round(self.rate, 1)
        if self.target:
            out |= {"target": self.target_text(), "verdict": self.verdict()}
        if self.note:
            out["note"] = self.note
        return out


class CpuClock:
    """CPU seconds spent on the measured work: this process (on SQLite that includes the
    aiosqlite thread doing the queries) plus, on a local PostgreSQL, the server backends
    serving this benchmark's connections (`/proc/<pid>/schedstat`, ns on a CPU)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.lookup: Callable[[], Awaitable[list[int]]] | None = None

    def __call__(self) -> float:
        total = time.process_time()
        for pid in self.pids:
            total += backend_cpu(pid)
        return total

    async def refresh(self) -> None:
        """Re-reads the backend pids (a pool may have opened or closed connections)."""
        if self.lookup is not None:
            self.pids = [pid for pid in await self.lookup() if is_postgres(pid)]


def backend_cpu(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0  # gone: the sample's delta is clamped at 0


def is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


CPU = CpuClock()


async def timed(
    name: str,
    op: Callable[[], Awaitable[Any]],
    n: int,
    *,
    warmup: int = 10,
    target: str = "",
    min_samples: int = MIN_SAMPLES,
) -> Result:
    """n samples after warmup; stops early (keeping >= MIN_SAMPLES) past the time budget."""
    for _ in range(warmup):
        await op()
    await CPU.refresh()
    result = Result(name, target=target)
    began = time.perf_counter()
    for _ in range(n):
        start, cpu = time.perf_counter(), CPU()
        await op()
        result.samples.append((time.perf_counter() - start) * 1000)
        result.cpu.append(max(0.0, CPU() - cpu) * 1000)
        if start - began > BUDGET_S and len(result.samples) >= min_samples:
            result.note = f"stopped at the {BUDGET_S:.0f} s budget"
            break
    log(f"  {name}: n={len(result.samples)} p50={result.p50:.2f} ms p99={result.p99:.2f} ms")
    return result


def cycling(items: Sequence[Any]) -> Iterator[Any]:
    return itertools.cycle(items)


# -- build ------------------------------------------------------------------------------


@dataclass
class BuildStats:
    threads: int = 0
    messages: int = 0
    wall_s: float = 0.0
    append_s: float = 0.0  # time inside append_messages only
    append_cpu_s: float = 0.0  # process CPU time (all threads) inside append_messages
    tail_messages: int = 0  # the last 10 % of the build
    tail_append_s: float = 0.0
    skipped: bool = False


def to_messages(thread: list[tuple[Role, str, int]]) -> list[Message]:
    return [
        Message(
            id=new_id(),
            conversation_id="",
            role=role,
            content=text,
            model="bench-model" if role is Role.ASSISTANT else "",
            usage=Usage(0, words * 4 // 3) if role is Role.ASSISTANT else Usage(),
        )
        for role, text, words in thread
    ]


class StealMeter:
    """Share of the vCPUs' time the hypervisor gave to other guests (Linux /proc/stat).

    On a shared virtual machine a vCPU can be paused for tens of milliseconds; a query
    caught by it shows wall time far above its CPU time. Reported, so a reader can tell
    a slow query from a stolen CPU.
    """

    def __init__(self) -> None:
        self.start = self._read()
        self.t0 = time.perf_counter()

    @staticmethod
    def _read() -> int | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
            return int(fields[8])  # cpu user nice system idle iowait irq softirq steal
        except (OSError, IndexError, ValueError):
            return None

    def percent(self) -> float | None:
        end = self._read()
        if self.start is None or end is None:
            return None
        ticks_per_s = os.sysconf("SC_CLK_TCK")
        elapsed = (time.perf_counter() - self.t0) * ticks_per_s * (os.cpu_count() or 1)
        return 100.0 * (end - self.start) / elapsed if elapsed > 0 else None


async def build(
    conv: Conversations,
    store: SqliteStore | PostgresStore,
    corpus: Corpus,
    threads: int,
    insert: bool,
) -> BuildStats:
    stats = BuildStats(skipped=not insert)
    total = threads * corpus.per_thread
    tail_from = threads - max(1, threads // 10)
    start = last_print = time.perf_counter()
    for i in range(threads):
        thread = corpus.thread()
        if insert:
            created = await conv.create(USER, title=f"Thread {i:05d}")
            batch = to_messages(thread)
            t0, c0 = time.perf_counter(), CPU()
            stored = await store.append_messages(USER, created.id, batch)
            spent = time.perf_counter() - t0
            stats.append_cpu_s += max(0.0, CPU() - c0)
            assert stored is not None
            stats.append_s += spent
            if i >= tail_from:
                stats.tail_messages += len(batch)
                stats.tail_append_s += spent
        stats.threads += 1
        stats.messages += len(thread)
        now = time.perf_counter()
        if now - last_print >= 0.5 or i == threads - 1:
            last_print = now
            elapsed = now - start
            rate = stats.messages / elapsed
            eta = (total - stats.messages) / rate if rate else 0
            verb = "built" if insert else "regenerated (no insert)"
            print(
                f"\r  {verb} {stats.messages:,}/{total:,} messages, {stats.threads:,} threads,"
                f" {rate:,.0f} msg/s, elapsed {fmt_duration(elapsed)}, ETA {fmt_duration(eta)} ",
                end="",
                file=sys.stderr,
                flush=True,
            )
    print(file=sys.stderr)
    stats.wall_s = time.perf_counter() - start
    return stats


async def build_concurrent(
    conv: Conversations, store: PostgresStore, corpus: Corpus, threads: int, writers: int
) -> BuildStats:
    """The same threads, created and appended by `writers` concurrent tasks (several
    replicas writing at once). The text is generated in order, so the corpus statistics
    match a serial build; the rates are end to end (text generation included)."""
    stats = BuildStats()
    total = threads * corpus.per_thread
    tail_from = threads - max(1, threads // 10)
    queue: asyncio.Queue[tuple[int, list[Message]] | None] = asyncio.Queue(2 * writers)

    async def writer() -> None:
        while (item := await queue.get()) is not None:
            i, batch = item
            created = await conv.create(USER, title=f"Thread {i:05d}")
            stored = await store.append_messages(USER, created.id, batch)
            assert stored is not None
            stats.threads += 1
            stats.messages += len(batch)

    # One pool connection per writer, open before the CPU clock reads their pids.
    await asyncio.gather(*(store.ping() for _ in range(writers)))
    await CPU.refresh()
    start = last_print = time.perf_counter()
    c0 = CPU()
    tail_t0, tail_m0 = start, 0
    tasks = [asyncio.create_task(writer()) for _ in range(writers)]
    for i in range(threads):
        if i == tail_from:
            tail_t0, tail_m0 = time.perf_counter(), stats.messages
        await queue.put((i, to_messages(corpus.thread())))
        now = time.perf_counter()
        if now - last_print >= 0.5:
            last_print = now
            rate = stats.messages / (now - start)
            eta = (total - stats.messages) / rate if rate else 0
            print(
                f"\r  built {stats.messages:,}/{total:,} messages, {writers} writers,"
                f" {rate:,.0f} msg/s, elapsed {fmt_duration(now - start)},"
                f" ETA {fmt_duration(eta)} ",
                end="",
                file=sys.stderr,
                flush=True,
            )
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    end = time.perf_counter()
    print(file=sys.stderr)
    stats.wall_s = stats.append_s = end - start
    stats.append_cpu_s = max(0.0, CPU() - c0)
    stats.tail_messages = stats.messages - tail_m0
    stats.tail_append_s = end - tail_t0
    return stats


# -- backends ---------------------------------------------------------------------------


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


class SqliteBackend:
    """The store plus a raw aiosqlite connection for the counts and the baselines."""

    name = "sqlite"

    def __init__(self, args: argparse.Namespace) -> None:
        self.keep = args.keep
        self.tmpdir: Path | None = None
        if args.db:
            self.path = Path(args.db)
        else:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="byok-bench-"))
            self.path = self.tmpdir / "bench.db"
        self.label = str(self.path)
        self.store: SqliteStore | None = None
        self.raw: aiosqlite.Connection | None = None

    async def open(self) -> SqliteStore:
        self.store = await SqliteStore.open(self.path)
        self.raw = await aiosqlite.connect(self.path, isolation_level=None)
        await self.raw.execute("PRAGMA journal_mode = WAL")
        return self.store

    async def _value(self, sql: str, *params: Any) -> Any:
        assert self.raw is not None
        async with self.raw.execute(sql, params) as cur:
            return (await cur.fetchone())[0]  # type: ignore[index]

    async def count_conversations(self) -> int:
        return int(await self._value("SELECT count(*) FROM conversations"))

    async def count_messages(self) -> int:
        return int(await self._value("SELECT count(*) FROM messages"))

    async def count_matches(self, q: Query) -> int:
        return int(
            await self._value(
                "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", q.text
            )
        )

    async def conversation_ids(self) -> list[str]:
        assert self.raw is not None
        async with self.raw.execute("SELECT id FROM conversations ORDER BY seq") as cur:
            return [r[0] for r in await cur.fetchall()]

    async def like(self, q: Query) -> None:
        assert self.raw is not None
        async with self.raw.execute(
            # CROSS JOIN keeps messages the outer loop, so the newest-first scan
            # stops after 21 matches (the planner would otherwise sort them all).
            "SELECT m.seq, m.id, m.content, c.title FROM messages m"
            " CROSS JOIN conversations c ON c.seq = m.conversation_seq"
            " WHERE c.user_id = ? AND ' ' || m.content || ' ' LIKE ?"
            " ORDER BY m.seq DESC LIMIT 21",
            (USER, q.like),
        ) as cur:
            await cur.fetchall()

    naive_name = "naive bm25"

    async def naive_rank(self, q: Query) -> None:
        assert self.raw is not None
        async with self.raw.execute(
            "SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?"
            " ORDER BY bm25(messages_fts) LIMIT 20",
            (q.text,),
        ) as cur:
            await cur.fetchall()

    async def after_build(self) -> dict[str, Any]:
        return {}  # the FTS5 index is left as the triggers wrote it (no optimize)

    async def sizes(self) -> dict[str, int]:
        sizes = {"db": file_size(self.path), "wal": file_size(Path(f"{self.path}-wal"))}
        sizes["fts_data_blocks"] = int(await self._value("SELECT count(*) FROM messages_fts_data"))
        return sizes

    @staticmethod
    def size_text(sizes: dict[str, int]) -> str:
        return (
            f"{sizes['db'] / 2**20:,.0f} MiB (+ WAL {sizes['wal'] / 2**20:,.1f} MiB),"
            f" FTS blocks {sizes['fts_data_blocks']:,}"
        )

    async def version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    async def close(self) -> None:
        if self.raw is not None:
            await self.raw.close()
        if self.store is not None:
            await self.store.close()
        if self.tmpdir is not None:
            if self.keep:
                log(f"kept {self.path}")
            else:
                shutil.rmtree(self.tmpdir, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresBackend:
    """PostgresStore plus one raw asyncpg connection for the counts and the baselines."""

    name = "postgres"

    def __init__(self, args: argparse.Namespace) -> None:
        self.keep = args.keep
        self.temporary = not args.database_url
        if args.database_url:
            self.url = args.database_url
        else:
            self.url = with_database(POSTGRES_SERVER, f"byok_bench_{secrets.token_hex(4)}")
        self.database = urlsplit(self.url).path.lstrip("/")
        if not self.database:
            raise SystemExit(f"--database-url {self.url!r} names no database")
        self.admin_url = with_database(self.url, "postgres")
        host = urlsplit(self.url).hostname or ""
        # Server CPU comes from /proc, so only for a server on this machine.
        self.local = host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/")
        self.label = re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", self.url)
        self.store: PostgresStore | None = None
        self.raw: asyncpg.Connection[asyncpg.Record] | None = None

    async def _admin(self, sql: str, *params: Any) -> Any:
        admin = await asyncpg.connect(asyncpg_dsn(self.admin_url))
        try:
            if not params:  # simple protocol: CREATE/DROP DATABASE
                return await admin.execute(sql)
            return await admin.fetchval(sql, *params)
        finally:
            await admin.close()

    async def open(self) -> PostgresStore:
        exists = await self._admin("SELECT 1 FROM pg_database WHERE datname = $1", self.database)
        if not exists:
            log(f"creating database {self.database}")
            await self._admin(
                f"CREATE DATABASE {quote_ident(self.database)} TEMPLATE template0 ENCODING 'UTF8'"
            )
        elif self.temporary:
            raise SystemExit(f"database {self.database} exists already")
        self.store = await PostgresStore.open(self.url)
        self.raw = await asyncpg.connect(
            asyncpg_dsn(self.url),
            # as the store's pool: a generic plan cannot see the pattern or the words
            server_settings={"plan_cache_mode": "force_custom_plan"},
        )
        if self.local:
            CPU.lookup = self._backend_pids
        return self.store

    async def _backend_pids(self) -> list[int]:
        assert self.raw is not None
        rows = await self.raw.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend'"
        )
        return [int(r[0]) for r in rows]

    async def _value(self, sql: str, *params: Any) -> Any:
        assert self.raw is not None
        return await self.raw.fetchval(sql, *params)

    async def count_conversations(self) -> int:
        return int(await self._value("SELECT count(*) FROM conversations"))

    async def count_messages(self) -> int:
        return int(await self._value("SELECT count(*) FROM messages"))

    async def count_matches(self, q: Query) -> int:
        return int(
            await self._value(
                "SELECT count(*) FROM messages WHERE search_tsv @@ to_tsquery('simple', $1)",
                parse_search_query(q.text),
            )
        )

    async def conversation_ids(self) -> list[str]:
        assert self.raw is not None
        rows = await self.raw.fetch("SELECT id FROM conversations ORDER BY seq")
        return [r[0] for r in rows]

    async def like(self, q: Query) -> None:
        assert self.raw is not None
        # ILIKE: SQLite's LIKE is case-insensitive for ASCII. The planner picks the join
        # order itself (newest first by the seq index, stopping at 21 matches).
        await self.raw.fetch(
            "SELECT m.seq, m.id, m.content, c.title FROM messages m"
            " JOIN conversations c ON c.seq = m.conversation_seq"
            " WHERE c.user_id = $1 AND ' ' || m.content || ' ' ILIKE $2"
            " ORDER BY m.seq DESC LIMIT 21",
            USER,
            q.like,
        )

    naive_name = "naive ts_rank_cd"

    async def naive_rank(self, q: Query) -> None:
        assert self.raw is not None
        await self.raw.fetch(
            f"SELECT seq FROM messages, to_tsquery('simple', $1) q WHERE search_tsv @@ q"
            f" ORDER BY {PG_RANK} DESC LIMIT 20",
            parse_search_query(q.text),
        )

    async def after_build(self) -> dict[str, Any]:
        """VACUUM ANALYZE, which autovacuum would run on its own within minutes of a
        bulk load: planner statistics for the tsvector column, the GIN pending list
        merged, the visibility map set."""
        assert self.raw is not None
        t0 = time.perf_counter()
        await self.raw.execute("VACUUM (ANALYZE) conversations, messages")
        spent = time.perf_counter() - t0
        log(f"  VACUUM ANALYZE {spent:.0f} s")
        return {"vacuum_analyze_s": round(spent, 1)}

    async def sizes(self) -> dict[str, int]:
        assert self.raw is not None
        row = await self.raw.fetchrow(
            "SELECT pg_database_size(current_database()), pg_table_size('messages'),"
            " pg_indexes_size('messages'), pg_relation_size('messages_search_index'),"
            " pg_total_relation_size('conversations')"
        )
        assert row is not None
        keys = ("db", "messages", "messages_indexes", "search_index", "conversations")
        return dict(zip(keys, (int(v) for v in row), strict=True))

    @staticmethod
    def size_text(sizes: dict[str, int]) -> str:
        mib = {k: v / 2**20 for k, v in sizes.items()}
        return (
            f"{mib['db']:,.0f} MiB: messages {mib['messages']:,.0f} MiB (with TOAST),"
            f" their indexes {mib['messages_indexes']:,.0f} MiB"
            f" (GIN {mib['search_index']:,.0f} MiB), conversations {mib['conversations']:,.1f} MiB"
        )

    async def version(self) -> str:
        assert self.raw is not None
        version = await self._value("SHOW server_version")
        buffers = await self._value("SHOW shared_buffers")
        return f"PostgreSQL {version.split()[0]} (shared_buffers {buffers})"

    async def close(self) -> None:
        CPU.lookup, CPU.pids = None, []
        if self.raw is not None:
            await self.raw.close()
        if self.store is not None:
            await self.store.close()
        if self.temporary and not self.keep:
            await self._admin(f"DROP DATABASE IF EXISTS {quote_ident(self.database)} WITH (FORCE)")
            log(f"dropped database {self.database}")
        else:
            log(f"kept database {self.label}")


Backend = SqliteBackend | PostgresBackend


# -- main -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    per_thread = max(1, args.messages // args.threads)
    backend: Backend = PostgresBackend(args) if args.backend == "postgres" else SqliteBackend(args)
    log(f"{backend.name} database: {backend.label}")
    results: list[Result] = []
    load: list[tuple[str, float]] = [("start", os.getloadavg()[0])]
    out: dict[str, Any] = {"backend": backend.name, "load_average_1m": load}
    try:
        store = await backend.open()
        conv = Conversations(store)
        await CPU.refresh()
        existing = await backend.count_conversations()
        insert = existing == 0
        if not insert and existing < args.threads:
            raise SystemExit(
                f"{backend.label} has {existing} threads (< {args.threads}); use a new database"
            )
        corpus = Corpus(SEED, per_thread)
        log(
            f"building {args.threads:,} threads x {per_thread} messages"
            if insert
            else f"reusing {existing:,} threads; regenerating corpus statistics"
        )
        writers = args.build_writers
        if insert and writers > 1:
            assert isinstance(store, PostgresStore)
            stats = await build_concurrent(conv, store, corpus, args.threads, writers)
        else:
            stats = await build(conv, store, corpus, args.threads, insert)
        load.append(("build", os.getloadavg()[0]))
        out["build"] = stats.__dict__ | {"writers": writers if insert else 0}
        if insert:
            out["build"] |= await backend.after_build()
        if insert:
            rate = stats.messages / stats.append_s
            tail = stats.tail_messages / stats.tail_append_s
            how = "inside append" if writers == 1 else f"end to end, {writers} writers"
            results.append(
                Result(
                    f"append_messages batched ({per_thread}/tx), whole build"
                    + ("" if writers == 1 else f", {writers} writers"),
                    target="append",
                    rate=rate,
                    note=f"{stats.messages:,} msgs in {stats.append_s:.0f} s {how}",
                )
            )
            results.append(
                Result(
                    "  same, messages / CPU s (no contention)",
                    rate=stats.messages / stats.append_cpu_s,
                    note="what one idle core would do: wall time above includes other load"
                    + ("" if writers == 1 else "; CPU includes text generation"),
                )
            )
            results.append(
                Result(
                    "append_messages batched, last 10 % of build",
                    target="append",
                    rate=tail,
                )
            )
            results.append(
                Result(
                    "build end-to-end (text gen + create + append)",
                    rate=stats.messages / stats.wall_s,
                    note=f"{fmt_duration(stats.wall_s)} wall",
                )
            )
            log(f"  append throughput {rate:,.0f} msg/s (batched), build {stats.wall_s:.0f} s")

        queries = choose_queries(corpus)
        for q in queries:
            q.matches = await backend.count_matches(q)
        n_messages = await backend.count_messages()
        out["messages"] = n_messages
        out["queries"] = [q.__dict__ for q in queries]
        log("query mix:")
        for q in queries:
            log(f"  {q.cls:7} {q.text:32} {q.matches:>9,} matches ({q.matches / n_messages:.3%})")
        search_steal = StealMeter()
        classes = list(dict.fromkeys(q.cls for q in queries if q.cls != STRESS))
        by_class = {c: [q for q in queries if q.cls == c] for c in [*classes, STRESS]}

        # -- list ------------------------------------------------------------------
        log("measuring list")
        tokens = [""]
        while True:
            _, token = await conv.list_conversations(USER, page_size=50, page_token=tokens[-1])
            if not token:
                break
            tokens.append(token)
        log(f"  {len(tokens)} pages of 50")
        n = args.iterations

        async def list_page(token: str) -> None:
            page, _ = await conv.list_conversations(USER, page_size=50, page_token=token)
            assert len(page) == 50 or token == tokens[-1]

        results.append(
            await timed("list page 1 (50 threads)", lambda: list_page(""), n, target="list")
        )
        deep = [tokens[len(tokens) // 10], tokens[len(tokens) // 2], tokens[-1]]
        deep_iter = cycling(deep)
        results.append(
            await timed(
                f"list deep pages ({', '.join(str(tokens.index(t) + 1) for t in deep)})",
                lambda: list_page(next(deep_iter)),
                n,
                target="list",
            )
        )

        # -- get -------------------------------------------------------------------
        log("measuring get")
        ids = await backend.conversation_ids()
        pick = random.Random(SEED + 2)

        async def get_thread() -> None:
            thread = await conv.get(USER, f"conversations/{pick.choice(ids)}", full=True)
            assert thread.messages is not None and len(thread.messages) >= per_thread

        results.append(
            await timed(f"get thread full ({per_thread} messages)", get_thread, n, target="get")
        )

        # -- search ----------------------------------------------------------------
        log("measuring search")

        def fresh() -> Conversations:
            # Conversations caches a relevance ranking per (query, snapshot); a new
            # instance per call measures a first page as a user's new search costs it.
            return Conversations(store)

        search_results: dict[str, list[Result]] = {}
        for order, order_by in ORDERS.items():
            search_results[order] = []
            for cls in classes:
                qs = cycling(by_class[cls])

                async def search(qs: Iterator[Query] = qs, order_by: str = order_by) -> None:
                    q = next(qs)
                    hits, _ = await fresh().search(
                        USER, "conversations/-", q.text, page_size=20, order_by=order_by
                    )
                    assert hits or q.matches == 0, q

                res = await timed(f"search {order} {cls}", search, n, warmup=2 * len(by_class[cls]))
                search_results[order].append(res)
            overall = Result(
                f"search {order} overall",
                [s for r in search_results[order] for s in r.samples],
                target="search",
                cpu=[s for r in search_results[order] for s in r.cpu],
            )
            search_results[order].append(overall)
        both = Result(
            "search overall (both orders)",
            [s for rs in search_results.values() for s in rs[-1].samples],
            target="search",
            cpu=[s for rs in search_results.values() for s in rs[-1].cpu],
        )
        # Page 2 by relevance reuses the ranking cached by page 1 (same snapshot).
        page2: list[tuple[Conversations, Query, str]] = []
        for q in (q for c in classes for q in by_class[c]):
            svc = fresh()
            _, token = await svc.search(USER, "conversations/-", q.text, page_size=20)
            if token:
                page2.append((svc, q, token))
        page2_iter = cycling(page2)

        async def search_page2() -> None:
            svc, q, token = next(page2_iter)
            await svc.search(USER, "conversations/-", q.text, page_size=20, page_token=token)

        page2_res = await timed(
            "search relevance page 2 (cached ranking)", search_page2, n, warmup=len(page2)
        )
        load.append(("search", os.getloadavg()[0]))
        out["cpu_steal_search_percent"] = search_steal.percent()
        stress: list[Result] = []
        broad = by_class[STRESS][0]
        for order, order_by in ORDERS.items():

            async def stress_search(order_by: str = order_by) -> None:
                await fresh().search(
                    USER, "conversations/-", broad.text, page_size=20, order_by=order_by
                )

            stress.append(
                await timed(
                    f"search {order} {broad.text} (stress, not in mix)",
                    stress_search,
                    args.stress_samples,
                    warmup=1,
                    target="search",
                    min_samples=2,
                )
            )

        # -- baselines -------------------------------------------------------------
        like_word = "ILIKE" if backend.name == "postgres" else "LIKE"
        log(f"measuring {like_word} baseline (slow)")
        like_results: list[Result] = []
        for cls in classes:
            qs = cycling(by_class[cls])

            async def like(qs: Iterator[Query] = qs) -> None:
                await backend.like(next(qs))

            like_results.append(
                await timed(f"{like_word} {cls}", like, args.like_samples, warmup=1)
            )
        like_overall = Result(
            f"{like_word} overall",
            [s for r in like_results for s in r.samples],
            cpu=[s for r in like_results for s in r.cpu],
        )
        like_results.append(like_overall)

        log(f"measuring {backend.naive_name} over every match of the common word")
        common = by_class["common"][0]

        async def naive() -> None:
            await backend.naive_rank(common)

        naive_res = await timed(
            f"{backend.naive_name}, all {common.matches:,} matches of {common.text!r}",
            naive,
            args.naive_samples,
            warmup=1,
        )

        # -- appends (last: they change the data) --------------------------------------
        log("measuring appends")
        extra = Corpus(SEED, per_thread, stream=2)
        singles = cycling([(role, text) for role, text, _ in extra.thread()])

        async def append_one() -> None:
            role, text = next(singles)
            await conv.append(
                USER,
                f"conversations/{pick.choice(ids)}",
                Message(id="", conversation_id="", role=role, content=text),
            )

        single = await timed("single append (1 msg/tx)", append_one, n, warmup=20)
        single.rate = 1000 / (sum(single.samples) / len(single.samples))
        batch_samples: list[float] = []
        batch_cpu: list[float] = []
        batch_msgs = 0
        for i in range(args.extra_threads):
            created = await conv.create(USER, title=f"Extra {i:03d}")
            batch = to_messages(extra.thread())
            t0, c0 = time.perf_counter(), CPU()
            await store.append_messages(USER, created.id, batch)
            batch_samples.append((time.perf_counter() - t0) * 1000)
            batch_cpu.append(max(0.0, CPU() - c0) * 1000)
            batch_msgs += len(batch)
        batched = Result(
            f"batched append at full size ({per_thread}/tx, {args.extra_threads} tx)",
            batch_samples,
            target="append",
            rate=batch_msgs / (sum(batch_samples) / 1000),
            cpu=batch_cpu,
            note=f"{batch_msgs / (sum(batch_cpu) / 1000):,.0f} msg/s per CPU s",
        )
        log(f"  batched append at full size: {batched.rate:,.0f} msg/s")

        sizes = await backend.sizes()

        # -- report ----------------------------------------------------------------
        results += [single, batched]
        results += search_results["relevance"] + [page2_res]
        results += search_results["newest"] + [both] + stress
        results += like_results
        results.append(naive_res)
        out["results"] = [r.as_json() for r in results]
        ratio_p50 = like_overall.p50 / search_results["newest"][-1].p50
        ratio_mean = (sum(like_overall.samples) / len(like_overall.samples)) / (
            sum(search_results["newest"][-1].samples) / len(search_results["newest"][-1].samples)
        )
        per_class_ratio = {
            cls: like_results[i].p50 / search_results["newest"][i].p50
            for i, cls in enumerate(classes)
        }
        out["like_over_fts"] = {
            "overall_p50": ratio_p50,
            "overall_mean": ratio_mean,
            "per_class_p50": per_class_ratio,
        }
        load.append(("end", os.getloadavg()[0]))
        out["db_size_bytes"] = sizes
        out["machine"] = {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "database": await backend.version(),
            "server_cpu_in_cpu_columns": bool(CPU.pids),
        }
        out["config"] = {
            "threads": args.threads,
            "messages_per_thread": per_thread,
            "iterations": n,
            "like_samples": args.like_samples,
            "search_window": SEARCH_WINDOW,
            "seed": SEED,
        }
        print_report(out, results, per_class_ratio, ratio_p50, ratio_mean, backend)
    finally:
        await backend.close()
    return out


def print_report(
    out: dict[str, Any],
    results: list[Result],
    per_class_ratio: dict[str, float],
    ratio_p50: float,
    ratio_mean: float,
    backend: Backend,
) -> None:
    m = out["machine"]
    c = out["config"]
    print()
    print(
        f"byok storage benchmark: {c['threads']:,} threads x {c['messages_per_thread']}"
        f" messages ({out['messages']:,} messages after the run)"
    )
    print(f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['database']}")
    print()
    width = max(len(r.name) for r in results) + 2
    header = (
        f"{'measurement':<{width}}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'msg/s':>10}"
        f"{'cpu p50':>9}{'cpu p99':>9}"
    )
    print(f"{header}  {'target':<18}result")
    print("-" * (len(header) + 26))
    for r in results:
        n = str(len(r.samples)) if r.samples else "-"
        p50 = f"{r.p50:.2f}" if r.samples else "-"
        p99 = f"{r.p99:.2f}" if r.samples else "-"
        rate = f"{r.rate:,.0f}" if r.rate is not None else ""
        print(
            f"{r.name:<{width}}{n:>6}{p50:>10}{p99:>10}{rate:>10}"
            f"{r.cpu_text(0.5):>9}{r.cpu_text(0.99):>9}  {r.target_text():<18}{r.verdict()}"
        )
    print()
    whose = (
        "this process and the PostgreSQL backends serving it"
        if m["server_cpu_in_cpu_columns"]
        else "this process (both threads)"
        if backend.name == "sqlite"
        else "this process only (the server is not local, its CPU is not counted)"
    )
    print(
        f"p50/p99: wall-clock ms (the targets); cpu: CPU ms of the same calls, {whose},"
        " which other load on the machine does not inflate"
    )
    ratios = ", ".join(f"{k} {v:,.1f}x" for k, v in per_class_ratio.items())
    like_word = "ILIKE" if backend.name == "postgres" else "LIKE"
    print(
        f"{like_word} / index (newest first, same page): overall p50 {ratio_p50:,.1f}x,"
        f" mean {ratio_mean:,.1f}x; per class p50: {ratios}"
    )
    loads = ", ".join(f"{phase} {value:.1f}" for phase, value in out["load_average_1m"])
    print(f"load average (1 min) on this {m['cores']}-core machine: {loads}")
    steal = out.get("cpu_steal_search_percent")
    if steal is not None:
        print(
            f"CPU steal during the searches: {steal:.1f}% of the vCPUs' time went to other"
            " guests of the host (wall p99 above cpu p99 is mostly this)"
        )
    print(f"database size: {backend.size_text(out['db_size_bytes'])}; {backend.label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--threads", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1_000_000, help="total messages")
    parser.add_argument("--db", help="SQLite database path (kept); reused if it already has data")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL database URL (created if missing, kept); reused if it already has"
        " data. Default: a temporary byok_bench_<hex> database on $BYOK_BENCH_POSTGRES"
        f" ({POSTGRES_SERVER})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary database")
    parser.add_argument("--json", help="write the raw figures to this file")
    parser.add_argument(
        "--iterations", type=int, default=300, help="samples per measurement (and search class)"
    )
    parser.add_argument("--like-samples", type=int, default=6, help="LIKE samples per class")
    parser.add_argument("--naive-samples", type=int, default=10)
    parser.add_argument(
        "--extra-threads",
        type=int,
        default=200,
        help="batched appends at size (enough that FTS5 segment merges are in the average)",
    )
    parser.add_argument("--stress-samples", type=int, default=3, help="broad-prefix samples")
    parser.add_argument(
        "--build-writers",
        type=int,
        default=1,
        help="PostgreSQL: concurrent writers for the build (SQLite has one writer)",
    )
    args = parser.parse_args()
    if args.db and args.backend != "sqlite":
        parser.error("--db is for --backend sqlite; use --database-url")
    if args.database_url and args.backend != "postgres":
        parser.error("--database-url is for --backend postgres")
    if args.build_writers > 1 and args.backend != "postgres":
        parser.error("--build-writers is for --backend postgres")
    if args.db:
        args.db = os.path.abspath(args.db)
    out = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
