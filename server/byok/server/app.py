"""The composition root: builds the store, the core, both doors, and wires them.

No other module creates globals; tests build an `App` on port-0 addresses and a
temporary data folder, exactly as `byok-server serve` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from starlette.applications import Starlette

from byok.server import tls
from byok.server.accounts.provider_keys import ProviderKeys, parse_master_key
from byok.server.accounts.users import Accounts
from byok.server.chat import tokens
from byok.server.chat.engine import ChatEngine
from byok.server.config import Settings, load_routing
from byok.server.conversations.service import Conversations
from byok.server.gateway.app import build_http_app
from byok.server.gateway.server import EmbeddedServer, bind, build_server
from byok.server.models.catalog import ModelCatalog
from byok.server.models.profiles import ModelProfiles
from byok.server.models.routing import RouteTable, RoutingConfig
from byok.server.models.stats import LiveStats
from byok.server.observability import Metrics, instrument_store, sqlite_size
from byok.server.providers.base import Provider
from byok.server.providers.registry import build_providers, close_all
from byok.server.ratelimit import build_limiter
from byok.server.rpc.server import GrpcServer, build_grpc_server
from byok.server.services import service_bindings
from byok.server.spaces.service import Spaces
from byok.server.storage import FullStore, open_store

log = logging.getLogger("byok.server")


class App:
    """One byok server process: gRPC and HTTP on one event loop, one store."""

    def __init__(self, settings: Settings, routing: RoutingConfig | None = None):
        self.settings = settings
        self.routing = routing if routing is not None else load_routing()
        self.providers: dict[str, Provider] = {}
        self.chat: ChatEngine | None = None
        # SQLite's size is its files', read at scrape time; PostgreSQL's is sampled by a
        # background task (a scrape must not wait on the database).
        self._db_size: float | None = None
        self.metrics: Metrics | None = (
            Metrics(
                db_size=(lambda: self._db_size)
                if settings.database_url
                else sqlite_size(settings.database_path)
            )
            if settings.metrics_enabled
            else None
        )
        self._size_task: asyncio.Task[None] | None = None
        self.limiter = build_limiter(
            settings.rate_limit_per_min,
            settings.token_limit_per_min,
            settings.use_redis,
            settings.redis_url.get_secret_value(),
            settings.rate_limit_fail_open,
            self.metrics,
            redis_timeout=settings.redis_timeout_seconds,
        )
        self.store: FullStore | None = None
        self.grpc: GrpcServer | None = None
        self.http: EmbeddedServer | None = None
        self.http_app: Starlette | None = None
        self.http_port = 0
        self._http_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    @property
    def grpc_port(self) -> int:
        return self.grpc.port if self.grpc else 0

    async def start(self) -> None:
        s = self.settings
        self.store = await open_store(s)
        if s.database_url and self.metrics is not None:
            self._size_task = asyncio.create_task(self._sample_db_size())
        # The tokenizer takes ~2 s to load: pay it now, not inside the first turn.
        await asyncio.to_thread(tokens.load_encoding)
        store = instrument_store(self.store, self.metrics) if self.metrics else self.store
        try:
            conversations = Conversations(store, workspace=store, search_window=s.search_window)
            routes = RouteTable(self.routing)
            stats = LiveStats()
            catalog = ModelCatalog(
                routes,
                stats,
                local_model_path=s.local_model_path,
                local_context=s.local_model_context,
            )
            profiles = ModelProfiles(store, routes)
            spaces = Spaces(store)
            accounts = Accounts(store)
            master = s.master_key.get_secret_value() if s.master_key else None
            provider_keys = ProviderKeys(
                store, parse_master_key(master) if master else None, self.routing.providers
            )
            self.providers = build_providers(self.routing, self._local_factory)
            chat = ChatEngine(
                conversations,
                routes,
                self.providers,
                {name: p.api_key for name, p in self.routing.providers.items()},
                user_keys=provider_keys,
                workspace=store,
                stats=stats,
                history_token_budget=s.context_token_budget,
                context_limits={"local": s.local_model_context},
                metrics=self.metrics,
                limiter=self.limiter,
            )

            async def authenticate(key: str) -> str:
                return (await accounts.authenticate(key)).id

            self.chat = chat
            self.grpc = build_grpc_server(
                service_bindings(conversations, chat, provider_keys, catalog, profiles, spaces),
                str(s.grpc_addr),
                authenticate=authenticate if s.auth_mode == "keys" else None,
                credentials=tls.server_credentials(s) if s.tls else None,
                metrics=self.metrics,
                limiter=self.limiter,
                max_streams_per_user=s.max_streams_per_user,
            )
            sock = bind(s.http_addr)
        except OSError:
            await self.store.close()
            raise
        if (
            s.allow_insecure
            and not s.tls
            and not (s.grpc_addr.is_loopback and s.http_addr.is_loopback)
        ):
            log.warning(
                "ALLOW_INSECURE=true: serving a non-loopback address without TLS; "
                "API keys and messages travel in clear text"
            )
        self.http_port = sock.getsockname()[1]
        await self.grpc.server.start()
        await self.grpc.set_serving()
        self.http_app = build_http_app(
            self._readiness,
            f"127.0.0.1:{self.grpc_port}",
            heartbeat_seconds=s.sse_heartbeat_seconds,
            grpc_credentials=tls.channel_credentials(s) if s.tls else None,
            metrics=self.metrics,
        )
        self.http = build_server(
            self.http_app, s.log_level, ssl=tls.uvicorn_ssl(s) if s.tls else None
        )
        self._http_task = asyncio.create_task(self.http.serve(sockets=[sock]))
        while not self.http.started:
            if self._http_task.done():
                await self._http_task
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info(
            "byok serving gRPC on %s:%d and HTTP on %s:%d (auth %s, TLS %s, event loop %s), "
            "data in %s",
            s.grpc_addr.host,
            self.grpc_port,
            s.http_addr.host,
            self.http_port,
            s.auth_mode,
            "on" if s.tls else "off",
            type(asyncio.get_running_loop()).__module__.partition(".")[0],
            s.data_dir,
        )

    async def _sample_db_size(self, every: float = 30.0) -> None:
        size_of = getattr(self.store, "database_size", None)
        while size_of is not None:
            with contextlib.suppress(Exception):  # a failed sample keeps the last one
                self._db_size = float(await size_of())
            await asyncio.sleep(every)

    def _local_factory(self) -> Provider:
        from byok.server.providers.local import LocalProvider  # heavy: only when used

        s = self.settings
        return LocalProvider(
            model_path=s.local_model_path,
            threads=s.local_model_threads,
            context=s.local_model_context,
        )

    async def _readiness(self) -> str | None:
        if self._stopping:
            return "shutting down"
        if self.store is None or self.grpc is None:
            return "starting"
        try:
            await self.store.ping()
        except Exception as exc:  # any failure means "not ready", with its reason
            return f"database: {exc}"
        return None

    async def stop(self, grace: float | None = None) -> None:
        """Stops taking calls, lets running ones finish within the grace period,
        then closes the store. Safe to call more than once."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        log.info("byok stopping: no new calls, %.1fs for running ones", grace)
        if self.chat:
            self.chat.shutting_down = True
        if self.grpc:
            await self.grpc.health.enter_graceful_shutdown()
            await self.grpc.server.stop(grace)
        if self.http and self._http_task:
            self.http.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
            if self.http_app is not None and self.http_app.state.gateway is not None:
                await self.http_app.state.gateway.aclose()
        if self._size_task is not None:
            self._size_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._size_task
        await close_all(self.providers)
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.store:
            await self.store.close()
        log.info("byok stopped")
        self._stopped.set()

    async def serve_until_signal(self, started: Callable[[], None] | None = None) -> None:
        """Runs until SIGTERM or SIGINT, then stops gracefully; `started` runs once the
        server is up (the process entry point freezes the start-up heap there)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        if started is not None:
            started()
        await stop.wait()
        await self.stop()
