"""Catalog snapshots per connection: loaded once, shared by sessions, refreshed on TTL/DDL.

A stale snapshot keeps serving while a fresh one loads in the background, so no
statement waits on catalog I/O except the very first of a connection.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from gateway import logs
from gateway.catalog.loader import CATALOG_QUERIES, build_catalog
from gateway.catalog.model import Catalog

Rows = list[tuple[str | None, ...]]
Fetch = Callable[[str, Mapping[str, str]], Awaitable[Mapping[str, Sequence[Sequence[str | None]]]]]


class CatalogUnavailable(Exception):
    """No catalog snapshot of a connection could be read: nothing can be decided."""

    sqlstate = "58000"

    def __init__(self, connection: str) -> None:
        super().__init__(f'could not read the catalog of connection "{connection}"')
        self.connection = connection


class CatalogCache:
    def __init__(self, fetch: Fetch, ttl: float = 60.0) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._snapshots: dict[str, tuple[float, Catalog]] = {}
        self._loading: dict[str, asyncio.Task[Catalog]] = {}

    def current(self, connection: str) -> Catalog | None:
        """The snapshot to decide with now (maybe stale: then a refresh starts)."""
        entry = self._snapshots.get(connection)
        if entry is None:
            return None
        loaded_at, catalog = entry
        if time.monotonic() - loaded_at > self._ttl:
            self._start_load(connection)
        return catalog

    async def get(self, connection: str) -> Catalog:
        """The snapshot, loaded now if there is none. Raises CatalogUnavailable."""
        catalog = self.current(connection)
        if catalog is not None:
            return catalog
        try:
            return await self._start_load(connection)
        except Exception:  # (logged by _loaded)
            raise CatalogUnavailable(connection) from None

    def put(self, connection: str, catalog: Catalog) -> None:
        """Install a snapshot read elsewhere (tools, tests)."""
        self._snapshots[connection] = (time.monotonic(), catalog)

    def invalidate(self, connection: str) -> None:
        """After DDL: the next statement waits for a fresh snapshot."""
        self._snapshots.pop(connection, None)

    def _start_load(self, connection: str) -> asyncio.Task[Catalog]:
        task = self._loading.get(connection)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._load(connection))
            task.add_done_callback(functools.partial(self._loaded, connection))
            self._loading[connection] = task
        return task

    @staticmethod
    def _loaded(connection: str, task: asyncio.Task[Catalog]) -> None:
        # Every load's failure is said once, here: also a background refresh's, which
        # nobody awaits (the stale snapshot serves on; the next statement tries again).
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        logs.error("catalog.load_failed", connection=connection, error=type(error).__name__,
                   reason=str(error)[:200])

    async def _load(self, connection: str) -> Catalog:
        t0 = time.monotonic()
        rows = await self._fetch(connection, CATALOG_QUERIES)
        catalog = build_catalog(rows)
        self._snapshots[connection] = (time.monotonic(), catalog)
        logs.info("catalog.loaded", connection=connection,
                  relations=sum(1 for _ in catalog.relations()),
                  ms=round((time.monotonic() - t0) * 1000, 1))
        return catalog
