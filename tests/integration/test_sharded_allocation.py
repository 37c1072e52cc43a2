"""Allocations whose lines live in several shards (docs/scaling.md): written shard by shard,
with the order's record saying how far they got. On a single Redis split in shards and on a
Redis Cluster, never an oversell, a repeat answers the same, and an order whose writer died
is finished by the next request, without holding its stock twice."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import msgspec
import pytest

from atp_service.orders import decode_stored
from atp_service.sharded_allocator import Pending, _pending_value
from tests.conftest import READ_KEY, WRITE_KEY, Stack
from tests.integration.helpers import availability, poll, receipt

pytestmark = [pytest.mark.integration, pytest.mark.redis_kinds("shards", "cluster")]
W = {"Authorization": f"Bearer {WRITE_KEY}"}
SKUS = [f"SH-{i}" for i in range(8)]


def _stock(stack: Stack, base: str, each: int) -> None:
    stack.produce([receipt(sku, each, "DC-EAST") for sku in SKUS])
    for sku in SKUS:
        poll(
            lambda sku=sku: availability(base, READ_KEY, "web", sku), lambda d: d["on_hand"] == each
        )


def test_orders_over_many_shards_racing_through_two_servers_never_oversell(
    stack: Stack,
) -> None:
    assert len({stack.layout.shard(s) for s in SKUS}) > 2  # the lines span shards
    stack.start_consumer()  # joins its group while the APIs start
    base, other = stack.start_apis(2)  # two `atp serve` processes
    _stock(stack, base, 10)
    rng = random.Random(5)
    orders = [
        {
            "order_id": f"SPAN-{n}",
            "channel": "web",
            "lines": [
                {"line_id": str(k), "sku": sku, "quantity": rng.randint(1, 3)}
                for k, sku in enumerate(rng.sample(SKUS, 3))
            ],
        }
        for n in range(40)
    ]

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=40)) as c:
            return await asyncio.gather(
                *(
                    c.post(f"{(base, other)[n % 2]}/v1/allocations", json=o, headers=W)
                    for n, o in enumerate(orders)
                )
            )

    replies = asyncio.run(race())
    assert all(r.status_code == 201 for r in replies), [r.text for r in replies][:3]
    taken = dict.fromkeys(SKUS, 0)
    for order, reply in zip(orders, replies, strict=True):
        for asked, line in zip(order["lines"], reply.json()["lines"], strict=True):
            got = sum(a["quantity"] for a in line["allocations"])
            assert got + line["unfilled"] + line["backordered"] == asked["quantity"]
            taken[asked["sku"]] += got
    for sku in SKUS:
        assert taken[sku] <= 10
        doc = availability(base, READ_KEY, "web", sku)
        assert doc["reserved"] == taken[sku], (sku, doc, taken[sku])
    assert sum(taken.values()) == 80  # 240 units asked of 80: every unit went
    again = asyncio.run(race())
    assert [r.status_code for r in again] == [200] * len(orders)
    assert [r.json() for r in again] == [r.json() for r in replies]

    released = httpx.delete(f"{base}/v1/allocations/SPAN-0", headers=W, timeout=30)
    assert released.status_code == 200 and released.json()["status"] == "released"
    for line in released.json()["lines"]:
        freed = sum(a["quantity"] for a in line["allocations"])
        reserved = availability(base, READ_KEY, "web", line["sku"])["reserved"]
        assert reserved == taken[line["sku"]] - freed


def test_an_order_whose_writer_died_is_finished_by_the_repeat(stack: Stack) -> None:
    stack.start_consumer()  # joins its group while the API starts
    base = stack.start_api()
    _stock(stack, base, 6)
    order = {
        "order_id": "DIED-1",
        "channel": "web",
        "lines": [{"line_id": str(k), "sku": sku, "quantity": 2} for k, sku in enumerate(SKUS[:4])],
    }
    first = httpx.post(f"{base}/v1/allocations", json=order, headers=W, timeout=30)
    assert first.status_code == 201
    # As a writer that wrote every shard and died before its final record leaves it.
    client = stack.redis()
    key = stack.layout.order_key("DIED-1")
    stored = decode_stored(client.get(key))  # type: ignore[arg-type]
    stale = Pending(stored.fingerprint, time.time_ns() // 1_000_000 - 60_000, stored.held)
    client.set(key, _pending_value(b"0123456789abcdef", stale))
    assert httpx.get(f"{base}/v1/allocations/DIED-1", headers=W).status_code == 404

    repeat = httpx.post(f"{base}/v1/allocations", json=order, headers=W, timeout=30)
    assert repeat.status_code == 201, repeat.text  # allocated now, by the taker-over
    for line in repeat.json()["lines"]:
        assert sum(a["quantity"] for a in line["allocations"]) == 2
        # Held once: the dead writer's reservations were released before these were made.
        assert availability(base, READ_KEY, "web", line["sku"])["reserved"] == 2
    assert (
        msgspec.json.decode(httpx.get(f"{base}/v1/allocations/DIED-1", headers=W).content)
        == repeat.json()
    )
