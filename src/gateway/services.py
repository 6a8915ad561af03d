"""Everything one gateway process holds, built from the config and opened/closed together."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import structlog

from gateway.config import Config
from gateway.keys import KeyCache
from gateway.metrics import Metrics
from gateway.proxy.demo import DemoBackend
from gateway.proxy.leases import Leases
from gateway.proxy.ratelimit import LocalLimiter, RateLimiter
from gateway.proxy.relay import Relay
from gateway.proxy.routing import Router
from gateway.proxy.upstream import Backend, HttpBackend, open_session
from gateway.storage import Store, store_from_url
from gateway.tasks import TaskGroup

__all__ = ["Services", "open_store"]

log = structlog.get_logger("gateway.services")


def open_store(config: Config) -> Store:
    return store_from_url(
        config.storage.url,
        pool_size=config.storage.pool_size,
        synchronous=config.storage.sqlite_synchronous,
        schema=config.storage.schema,
    )


class Services:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = open_store(config)
        self.metrics = Metrics()
        self.tasks = TaskGroup()
        self.router = Router(config)
        self.keys = KeyCache(self.store)
        self.leases = Leases()
        self.limiter: RateLimiter = LocalLimiter()
        self.admin_token = os.environ.get(config.admin.token_env, "")
        self.backends: dict[str, Backend] = {}
        self._session: aiohttp.ClientSession | None = None
        self.relay: Relay | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        metrics = self.metrics
        released = await self.store.serve(
            migrate=self.config.storage.migrate_on_start, busy=lambda: metrics.active > 1
        )
        if released:
            log.warning("reservations_released_at_start", count=released)
        if self.config.ratelimit.redis_url:
            from gateway.proxy.ratelimit_redis import RedisLimiter

            limits = self.config.ratelimit
            self.limiter = RedisLimiter(
                limits.redis_url, metrics=self.metrics, timeout_s=limits.timeout_s
            )
        self._session = open_session()
        for backend in self.config.backends:
            if backend.kind == "demo":
                self.backends[backend.name] = DemoBackend(backend)
            else:
                self.backends[backend.name] = HttpBackend(backend, self._session)
        self.relay = Relay(
            config=self.config,
            store=self.store,
            router=self.router,
            backends=self.backends,
            limiter=self.limiter,
            metrics=self.metrics,
            tasks=self.tasks,
            leases=self.leases,
        )
        await asyncio.to_thread(self.relay.load_tokenizers)
        self._sweeper = self.tasks.spawn(self._sweep(), name="reservation-sweeper")

    async def _sweep(self) -> None:
        """Renew the leases of the requests this process serves, then release the reservations
        whose lease ended (their instance died, or stopped renewing): every
        ``sweep_interval_s``, and at least three times a lease."""
        storage = self.config.storage
        every = min(storage.sweep_interval_s, storage.reservation_lease_s / 3)
        while True:
            await asyncio.sleep(every)
            try:
                live = self.leases.ids()
                if live:
                    await self.store.renew(live, storage.reservation_lease_s)
                released = await self.store.release_expired()
            except Exception:
                log.exception("reservation_sweep_failed")
                continue
            if released:
                log.warning("expired_reservations_released", count=released)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.tasks.drain(within_s=self.config.server.graceful_shutdown_s)
        await self.tasks.cancel_all()
        if self._session is not None:
            await self._session.close()
        await self.limiter.close()
        await self.store.close()
