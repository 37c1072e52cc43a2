"""Capacity claims with several shards (atp_service/store/capacity.py), against a real
Redis: a claim past a location's capacity is refused whole, a claim made again counts once
(with its new units if they changed), one given back counts no more, and a consumer's
write whose claim is refused writes nothing."""

from __future__ import annotations

import time

import pytest
import redis
import redis.asyncio as aredis

from atp_service.store import keys
from atp_service.store.capacity import AsyncClaims
from atp_service.store.redis_store import RedisStore, initialize
from streams.changeset import ChangeSet, claim_key
from tests.integration.helpers import WINDOW_MS, receipt_write

pytestmark = pytest.mark.integration

LAYOUT = keys.Layout(4)
DAY = 20_000


def claims(**units: int) -> ChangeSet:
    """A write claiming, per reservation id, that many units of DC-EAST (capacity 10)."""
    changes = ChangeSet(capacity_day=DAY)
    changes.claims = {claim_key("CC-1", rid): ("DC-EAST", n, 10) for rid, n in units.items()}
    return changes


def counted(client: redis.Redis) -> int:
    return int(client.hget(LAYOUT.capacity_key(DAY), "DC-EAST") or 0)  # type: ignore[arg-type]


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    found = redis.Redis.from_url(redis_url)
    found.flushall()
    return found


async def test_claims_count_once_never_pass_the_capacity_and_go_back(
    client: redis.Redis, redis_url: str
) -> None:
    api = AsyncClaims(aredis.Redis.from_url(redis_url), LAYOUT)
    assert await api.claim(claims(r1=6))
    assert not await api.claim(claims(r2=5))  # 11 > 10: refused whole
    assert not await api.claim(claims(r3=1, r4=4))
    assert counted(client) == 6
    assert await api.claim(claims(r1=6))  # made again: counted once
    assert counted(client) == 6
    assert await api.claim(claims(r1=2, r2=8))  # r1 planned again with fewer units
    assert counted(client) == 10
    await api.give_back([claim_key("CC-1", "r2"), claim_key("CC-1", "r9")], [DAY - 1, DAY])
    await api.give_back([claim_key("CC-1", "r2")], [DAY])  # once only
    assert counted(client) == 2
    ttl = client.pttl(LAYOUT.capacity_claims_key(DAY))
    assert 0 < ttl <= 3 * 86_400_000


def test_a_consumer_write_whose_claim_is_refused_writes_nothing(
    client: redis.Redis, redis_url: str
) -> None:
    initialize(client, LAYOUT, "test")
    store = RedisStore(client, "g", WINDOW_MS, LAYOUT)
    assert store.claims.claim(claims(r1=9))
    now_ms = time.time_ns() // 1_000_000
    changes = receipt_write(redis_url, "CC-2", ["e-1"], now_ms)
    changes.capacity_day = DAY
    changes.claims = {claim_key("CC-2", "r5"): ("DC-EAST", 2, 10)}
    assert store.write(changes, now_ms) == ["CC-2"]
    assert store.read(["CC-2"]).versions.get("CC-2", 0) == 0
    assert counted(client) == 9
    changes.claims = {claim_key("CC-2", "r5"): ("DC-EAST", 1, 10)}
    assert store.write(changes, now_ms) == []
    assert counted(client) == 10
