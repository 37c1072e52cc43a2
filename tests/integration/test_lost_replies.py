"""A write whose reply is lost may have landed: redis-py sends a command again after a
connection reset, and the second run then finds the first one's work done. Against a real
Redis, on one shard and on 4, an order allocated while every write of it runs twice holds
its stock once, is answered as allocated, and its reservations are published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aredis

from atp_service.allocator import Allocator, PublishFailed
from atp_service.config import parse_config
from atp_service.model import projector_for
from atp_service.orders import OrderLine, OrderRequest, decode_stored
from atp_service.sharded_allocator import Pending, ShardedAllocator, _pending_value
from atp_service.store import keys
from atp_service.store.async_store import AsyncRedisStore
from atp_service.store.redis_store import RedisStore, initialize
from streams.changeset import build_changeset
from streams.events import ReservationCreated
from streams.kafka import Outgoing, ProduceFailed
from streams.projector import Projector
from streams.state import BinStock, SkuState
from tests.conftest import config_text
from tests.fakes import Twice, TwiceClient, WrittenTwice, send_dies, send_into

pytestmark = pytest.mark.integration

LAYOUT = keys.Layout(4)
SKUS = [f"LR-{i}" for i in range(6)]
WINDOW_MS = 7 * 86_400_000


def stocked(redis_url: str, layout: keys.Layout) -> tuple[RedisStore, Projector]:
    """A store of ``layout`` holding 5 units of every sku at DC-EAST, and its projector."""
    options = {"shards": layout.shards}
    projector = projector_for(parse_config(config_text(redis_url, redis_options=options)))
    sync = RedisStore(redis.Redis.from_url(redis_url), "g", WINDOW_MS, layout)
    initialize(sync.client, layout, "test")
    stock = [SkuState(sku, (BinStock("DC-EAST", "A1", "available", 5),)) for sku in SKUS]
    now = 1_796_000_000_000_000
    assert not sync.write(build_changeset(stock, {}, projector, now), now // 1000)
    return sync, projector


def test_an_order_whose_every_write_ran_twice_holds_its_stock_once(redis_url: str) -> None:
    assert len({LAYOUT.shard(sku) for sku in SKUS}) > 2  # the order's lines span shards
    sync, projector = stocked(redis_url, LAYOUT)
    sent: list[Outgoing] = []

    async def allocate() -> Any:
        client = TwiceClient.from_url(redis_url)
        store = Twice(client, "g", WINDOW_MS, LAYOUT)
        allocator = ShardedAllocator(store, projector, send_into(sent), "oms.reservations")
        swap = allocator._swap

        async def swap_twice(keys: Any, args: Any) -> Any:  # the record's swaps, too
            await swap(keys=keys, args=args)
            return await swap(keys=keys, args=args)

        allocator._swap = swap_twice  # type: ignore[method-assign]
        lines = [OrderLine(str(n), sku, 3) for n, sku in enumerate(SKUS)]
        try:
            return await allocator.allocate([OrderRequest("O-LR", "web", lines)])
        finally:
            await client.aclose()

    ((result, created),) = asyncio.run(allocate())
    assert created and result.status == "allocated"
    assert [sum(a.quantity for a in line.allocations) for line in result.lines] == [3] * 6
    reserved = {
        sku: sum(r.quantity for r in state.reservations if r.created and not r.released)
        for sku, state in sync.read(SKUS).states.items()
    }
    assert reserved == dict.fromkeys(SKUS, 3)  # once, not twice
    record = decode_stored(sync.client.get(LAYOUT.order_key("O-LR")))
    assert len(record.held) == 6 and len(sent) == 6


@pytest.mark.parametrize("orders", [1, 3])  # one order (grouped requests), and a batch
def test_one_shard_an_order_whose_write_ran_twice_is_published_once_held_once(
    redis_url: str, orders: int
) -> None:
    sync, projector = stocked(redis_url, keys.SINGLE)
    sent: list[Outgoing] = []

    async def allocate() -> Any:
        client = aredis.Redis.from_url(redis_url)
        allocator = Allocator(WrittenTwice(client, "g", WINDOW_MS), projector, send_into(sent), "r")
        requests = [
            OrderRequest(f"O-{n}", "web", [OrderLine("1", SKUS[n], 2)]) for n in range(orders)
        ]
        try:
            return await allocator.allocate(requests)
        finally:
            await client.aclose()

    answers = asyncio.run(allocate())
    assert [(result.status, created) for result, created in answers] == [
        ("allocated", True)
    ] * orders
    reserved = {
        sku: sum(r.quantity for r in state.reservations if r.created and not r.released)
        for sku, state in sync.read(SKUS[:orders]).states.items()
    }
    assert reserved == dict.fromkeys(SKUS[:orders], 2)
    assert len(sent) == orders  # each order's reservation_created, once


@pytest.mark.parametrize("layout", [keys.SINGLE, LAYOUT], ids=["1 shard", "4 shards"])
def test_an_order_whose_request_died_before_publishing_is_published_by_a_sweep(
    redis_url: str, layout: keys.Layout
) -> None:
    """Its reservations stay held (the write landed), so their events must reach the broker
    and the ledger: any API process's sweep sends them, once, after the request's time."""
    sync, projector = stocked(redis_url, layout)
    sent: list[Outgoing] = []
    kind = ShardedAllocator if layout.shards > 1 else Allocator
    lines = [OrderLine(str(n), sku, 2) for n, sku in enumerate(SKUS[:3])]

    async def run() -> tuple[int, int, int]:
        client = aredis.Redis.from_url(redis_url)
        store = AsyncRedisStore(client, "g", WINDOW_MS, layout)
        try:
            with pytest.raises(RuntimeError):
                await kind(store, projector, send_dies, "r").allocate(
                    [OrderRequest("O-DIED", "web", lines)]
                )
            other = kind(store, projector, send_into(sent), "r")  # another API process
            young = await other.publish_unpublished()  # the request may still be at work
            first = await other.publish_unpublished(older_than_ms=0)
            again = await other.publish_unpublished(older_than_ms=0)
            return young, first, again
        finally:
            await client.aclose()

    assert asyncio.run(run()) == (0, 1, 0)
    record = decode_stored(sync.client.get(layout.order_key("O-DIED")))
    assert record.result.status == "allocated" and len(record.held) == 3
    events = [msgspec.json.decode(m.value, type=ReservationCreated) for m in sent]
    assert sorted((e.sku, e.reservation_id, e.quantity) for e in events) == sorted(
        (h.sku, h.reservation_id, h.quantity) for h in record.held
    )
    assert not sync.client.hlen(layout.unpublished_key())


def test_a_published_or_undone_order_is_never_published_by_a_sweep(redis_url: str) -> None:
    sync, projector = stocked(redis_url, keys.SINGLE)
    sent: list[Outgoing] = []

    def refused(messages: Sequence[Outgoing], timeout_s: float) -> None:
        raise ProduceFailed("the broker did not acknowledge")

    async def run() -> int:
        client = aredis.Redis.from_url(redis_url)
        store = AsyncRedisStore(client, "g", WINDOW_MS)
        try:
            allocator = Allocator(store, projector, send_into(sent), "r")
            await allocator.allocate([OrderRequest("O-OK", "web", [OrderLine("1", SKUS[0], 1)])])
            with pytest.raises(PublishFailed):  # undone: its reservation released
                await Allocator(store, projector, refused, "r").allocate(
                    [OrderRequest("O-UNDONE", "web", [OrderLine("1", SKUS[1], 1)])]
                )
            return await allocator.publish_unpublished(older_than_ms=0)
        finally:
            await client.aclose()

    assert asyncio.run(run()) == 0
    assert len(sent) == 1  # the first request's own, only
    assert not sync.client.hlen(keys.SINGLE.unpublished_key())


def test_an_abandoned_pending_order_is_released_by_a_sweep(redis_url: str) -> None:
    """On several shards a writer that died before its final record leaves a pending record
    naming what it may hold; with no repeat to take it over, a sweep releases it."""
    sync, projector = stocked(redis_url, LAYOUT)
    lines = [OrderLine(str(n), sku, 2) for n, sku in enumerate(SKUS[:4])]
    key = LAYOUT.order_key("O-ABANDONED")

    def reserved() -> dict[str, int]:
        return {
            sku: sum(r.quantity for r in state.reservations if r.created and not r.released)
            for sku, state in sync.read(SKUS[:4]).states.items()
        }

    async def run() -> list[int]:
        client = aredis.Redis.from_url(redis_url)
        store = AsyncRedisStore(client, "g", WINDOW_MS, LAYOUT)
        allocator = ShardedAllocator(store, projector, send_into([]), "r")
        try:
            await allocator.allocate([OrderRequest("O-ABANDONED", "web", lines)])
            assert reserved() == dict.fromkeys(SKUS[:4], 2)
            # As a writer that wrote every shard and died before its final record leaves it.
            stored = decode_stored(sync.client.get(key))
            counts = []
            for age_ms in (1_000, 60_000):  # its writer may be at work; then it is not
                since = time.time_ns() // 1_000_000 - age_ms
                pending = Pending(stored.fingerprint, since, stored.held)
                sync.client.set(key, _pending_value(b"0123456789abcdef", pending))
                sync.client.hset(LAYOUT.unpublished_key(), "O-ABANDONED", since)
                counts.append(await allocator.publish_unpublished(older_than_ms=0))
                counts.append(sync.client.hlen(LAYOUT.unpublished_key()))
            return counts
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [0, 1, 0, 0]  # left while young, then settled
    assert reserved() == dict.fromkeys(SKUS[:4], 0)
    assert sync.client.get(key) is None  # a repeat allocates it afresh
