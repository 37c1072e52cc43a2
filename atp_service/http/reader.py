"""Reads of the projection, with an in-process cache that has a hard staleness bound.

The stored documents are the exact response bodies, so a read is a dictionary lookup (cache
hit) or one Redis round trip (miss); it never aggregates and never encodes.

Freshness: every write script PUBLISHes the skus it rewrote on ``keys.INVALIDATIONS``; a
task here drops those entries. The same task PUBLISHes a heartbeat on that channel every
``HEARTBEAT_S``. Redis delivers a connection's messages in publish order, so once the
heartbeat published at time t has arrived, every invalidation published before t has been
applied. The cache is consulted only while the newest heartbeat received was published
less than ``staleness_s`` ago; otherwise reads go to Redis. A cached value is therefore
never older than what Redis holds by more than ``staleness_s`` (default 250 ms).

A lost projection (contract section 4): when Redis answers but its projection marker is
gone (emptied, or replaced by an empty server), a missing document does not mean "never
seen", so reads raise ProjectionMissing (503) instead of answering zeros. Every read that
goes to Redis asks for the marker in the same round trip; the heartbeat asks too, and while
the marker is missing it publishes no heartbeat, so the cache stops being used within
``staleness_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Final

import redis.asyncio as aredis

from atp_service.store import keys
from streams.changeset import projection_field
from streams.projector import Projector
from streams.state import SkuState
from streams.store import ProjectionMissing

log = logging.getLogger(__name__)

HEARTBEAT_S: Final = 0.05
HEARTBEAT_PREFIX: Final = "hb:"
STOP_S: Final = 3.0


class AvailabilityReader:
    def __init__(
        self,
        client: aredis.Redis,
        projector: Projector,
        staleness_s: float,
        max_entries: int = 500_000,
    ) -> None:
        self.client = client
        self.projector = projector
        self.staleness_s = staleness_s
        self.max_entries = max_entries
        self._cache: dict[tuple[str, str], bytes] = {}
        self._generation = 0
        self._fresh_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        self._stopping = False
        self._token = f"{HEARTBEAT_PREFIX}{id(self)}:{time.monotonic_ns()}"
        self.hits = 0
        self.misses = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.staleness_s <= 0:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._listen())
        self._beat = asyncio.create_task(self._heartbeat())

    async def stop(self) -> None:
        """End both tasks, waiting at most STOP_S. A cancel alone is not enough: on Python
        3.11 one that lands while redis-py writes a command (``asyncio.wait_for`` in its
        ``send_packed_command``, e.g. in the connection handshake) is lost when the write has
        just finished (fixed in 3.12), and the loop runs on, past our shutdown, until the
        event loop's own shutdown cancels it and waits for it without a bound. So each loop
        also ends on ``_stopping`` (the listener within its 1 s read timeout) and the cancel
        is repeated while we wait."""
        self._stopping = True
        deadline = time.monotonic() + STOP_S
        while True:
            running = [
                task for task in (self._task, self._beat) if task is not None and not task.done()
            ]
            if not running:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                # Bounded: a half-closed Redis connection must not hold up shutdown.
                log.warning("the invalidation tasks did not stop within %.1f s", STOP_S)
                return
            for task in running:
                task.cancel()
            await asyncio.wait(running, timeout=min(0.1, left))

    @property
    def cache_usable(self) -> bool:
        return time.monotonic() < self._fresh_until

    # -- reads ------------------------------------------------------------------------

    def cached(self, channel: str, sku: str) -> bytes | None:
        """The cached document if the cache may be used now, else None (no I/O)."""
        if not self.cache_usable:
            return None
        document = self._cache.get((channel, sku))
        if document is not None:
            self.hits += 1
        return document

    async def one(self, channel: str, sku: str) -> bytes:
        if self.cache_usable:
            cached = self._cache.get((channel, sku))
            if cached is not None:
                self.hits += 1
                return cached
        self.misses += 1
        generation = self._generation
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(keys.sku_key(sku), projection_field(channel))
        pipe.exists(keys.INITIALIZED)
        document: bytes | None
        document, initialized = await pipe.execute()
        if document is None:
            if not initialized:
                raise ProjectionMissing("redis holds no projection marker")
            return self._unseen(channel, sku)
        self._remember(generation, {(channel, sku): document})
        return document

    async def many(self, channel: str, skus: Sequence[str], fresh: bool = False) -> list[bytes]:
        """Documents in the order asked; ``fresh`` reads Redis, never the cache."""
        out: list[bytes | None] = [None] * len(skus)
        missing: list[int] = []
        usable = self.cache_usable and not fresh
        for i, sku in enumerate(skus):
            cached = self._cache.get((channel, sku)) if usable else None
            if cached is None:
                missing.append(i)
            else:
                out[i] = cached
        self.hits += len(skus) - len(missing)
        if missing:
            self.misses += len(missing)
            generation = self._generation
            field = projection_field(channel)
            pipe = self.client.pipeline(transaction=False)
            for i in missing:
                pipe.hget(keys.sku_key(skus[i]), field)
            pipe.exists(keys.INITIALIZED)
            *found, initialized = await pipe.execute()
            if not initialized and any(document is None for document in found):
                raise ProjectionMissing("redis holds no projection marker")
            fetched: dict[tuple[str, str], bytes] = {}
            for i, document in zip(missing, found, strict=True):
                if document is None:
                    out[i] = self._unseen(channel, skus[i])
                else:
                    out[i] = document
                    fetched[(channel, skus[i])] = document
            self._remember(generation, fetched)
        return [doc for doc in out if doc is not None]

    def _unseen(self, channel: str, sku: str) -> bytes:
        rendered = self.projector.render([SkuState(sku=sku)], time.time_ns() // 1000)
        return rendered.documents[sku][channel]

    def _remember(self, generation: int, documents: dict[tuple[str, str], bytes]) -> None:
        # An invalidation that arrived while we were reading may be for what we read: then
        # the value is not cached (the next read fetches again).
        if not documents or generation != self._generation or not self.cache_usable:
            return
        if len(self._cache) + len(documents) > self.max_entries:
            self._cache.clear()
        self._cache.update(documents)

    # -- invalidation -----------------------------------------------------------------

    def invalidate(self, skus: Sequence[str]) -> None:
        self._generation += 1
        channels = self.projector.network.channels
        for sku in skus:
            for channel in channels:
                self._cache.pop((channel, sku), None)

    async def _listen(self) -> None:
        while not self._stopping:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.INVALIDATIONS)
                # Anything may have changed while we were not subscribed.
                self._cache.clear()
                self._generation += 1
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = message["data"]
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    if text.startswith(HEARTBEAT_PREFIX):
                        if text.startswith(self._token + "@"):
                            sent = float(text.rsplit("@", 1)[1])
                            self._fresh_until = sent + self.staleness_s
                        continue
                    self.invalidate(text.split("\n"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._fresh_until = 0.0
                log.warning("invalidation listener lost (%s); reads bypass the cache", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), timeout=1.0)

    async def _heartbeat(self) -> None:
        while not self._stopping:
            try:
                # No heartbeat while the projection is lost: the cache stops being used.
                if await self.client.exists(keys.INITIALIZED):
                    await self.client.publish(
                        keys.INVALIDATIONS, f"{self._token}@{time.monotonic():.6f}"
                    )
            except asyncio.CancelledError:
                raise
            except Exception:  # the listener notices the silence and stops using the cache
                pass
            await asyncio.sleep(HEARTBEAT_S)
