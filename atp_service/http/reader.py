"""Reads of the projection, with an in-process cache that has a hard staleness bound.

The stored documents are the exact response bodies, so a read is a dictionary lookup (cache
hit) or one Redis round trip (miss); it never aggregates and never encodes.

Freshness: every write script SPUBLISHes the skus it rewrote on its shard's channel
(``Layout.invalidations``, sharded pub/sub, served by the node that holds the shard); a task
here drops those entries. Another task SPUBLISHes a heartbeat every ``HEARTBEAT_S`` on one
shard channel of each node (a single Redis is one node). A node delivers the messages it
publishes to one subscriber connection in publish order, whatever their shard channel, so
once the heartbeat a node published at time t has arrived, every invalidation that node
published before t has been applied. The cache is consulted only while, for every node,
the newest heartbeat received was published less than ``staleness_s`` ago; otherwise reads
go to Redis. A cached value is therefore never older than what Redis holds by more than
``staleness_s`` (default 250 ms), on a single Redis and on a cluster alike.

A lost projection (contract section 4): when Redis answers but a shard's projection marker
is gone (emptied, or a node replaced by an empty one), a missing document does not mean
"never seen", so reads raise ProjectionMissing (503) instead of answering zeros. Every read
that goes to Redis asks for the markers of its skus' shards in the same round trip; the
heartbeat asks too, and publishes no heartbeat on a shard whose marker is missing, so the
cache stops being used within ``staleness_s``.
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
        layout: keys.Layout = keys.SINGLE,
    ) -> None:
        self.client = client
        self.layout = layout
        self._channels = {
            layout.invalidations(shard).encode(): shard for shard in range(layout.shards)
        }
        # Node of each shard as the heartbeat last found it (one node on a single Redis), and
        # per node the newest heartbeat's send time.
        self._node_of = ["redis"] * layout.shards
        # A cluster client says which node holds a key; a single Redis is one node.
        self._locate = getattr(client, "get_node_from_key", None)
        self._beats: dict[str, float] = {}
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
        pipe.hget(self.layout.sku_key(sku), projection_field(channel))
        pipe.exists(self.layout.marker_key(self.layout.shard(sku)))
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
            layout = self.layout
            shards = sorted({layout.shard(skus[i]) for i in missing})
            pipe = self.client.pipeline(transaction=False)
            for i in missing:
                pipe.hget(layout.sku_key(skus[i]), field)
            for shard in shards:
                pipe.exists(layout.marker_key(shard))
            replies = await pipe.execute()
            found, markers = replies[: len(missing)], replies[len(missing) :]
            if not all(markers) and any(document is None for document in found):
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
                await pubsub.ssubscribe(*self._channels)
                # Anything may have changed while we were not subscribed.
                self._cache.clear()
                self._generation += 1
                self._beats = {}
                # A cluster's messages come from several nodes, polled in turn: a short
                # wait on each.
                wait = 0.005 if self._locate is not None else 1.0
                while not self._stopping:
                    message = await pubsub.get_sharded_message(
                        ignore_subscribe_messages=True, timeout=wait
                    )
                    if message is None or message.get("type") != "smessage":
                        continue
                    data = message["data"]
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    if text.startswith(HEARTBEAT_PREFIX):
                        if text.startswith(self._token + "@"):
                            channel = message["channel"]
                            shard = self._channels.get(
                                channel if isinstance(channel, bytes) else str(channel).encode()
                            )
                            if shard is not None:
                                self._beats[self._node_of[shard]] = float(text.rsplit("@", 1)[1])
                                nodes = set(self._node_of)
                                if nodes <= self._beats.keys():
                                    oldest = min(self._beats[n] for n in nodes)
                                    self._fresh_until = oldest + self.staleness_s
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

    def _shards_by_node(self) -> dict[str, list[int]]:
        """The shards each node holds now (on a cluster, from the client's slot map)."""
        if self._locate is not None:
            self._node_of = [
                self._locate(self.layout.marker_key(s)).name for s in range(self.layout.shards)
            ]
        by_node: dict[str, list[int]] = {}
        for shard, node in enumerate(self._node_of):
            by_node.setdefault(node, []).append(shard)
        return by_node

    async def _heartbeat(self) -> None:
        while not self._stopping:
            try:
                # No heartbeat on a shard whose projection is lost: the cache stops being
                # used.
                beat = f"{self._token}@{time.monotonic():.6f}"
                for shards in self._shards_by_node().values():
                    pipe = self.client.pipeline(transaction=False)
                    for shard in shards:
                        pipe.exists(self.layout.marker_key(shard))
                    if all(await pipe.execute()):
                        await self.client.spublish(self.layout.invalidations(shards[0]), beat)
            except asyncio.CancelledError:
                raise
            except Exception:  # the listener notices the silence and stops using the cache
                pass
            await asyncio.sleep(HEARTBEAT_S)
