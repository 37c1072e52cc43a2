"""The dedupe marks against a real Redis: an applied event_id is found again for the whole
window, across the buckets its marks are kept in, and not after it; a sku's marks are kept
compact (an intset) and expire on their own; and a rebuild's new digest key never lets an
event be applied twice by a writer that still holds the old one."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aredis

from atp_service.store import keys
from atp_service.store.async_store import AsyncRedisStore
from atp_service.store.marks import DigestKeyChanged
from atp_service.store.redis_store import RedisStore, initialize
from tests.integration.helpers import WINDOW_MS, receipt_write

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


@pytest.fixture
def store(redis_url: str) -> RedisStore:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    initialize(client, keys.SINGLE, "test")
    return RedisStore(client, "g", WINDOW_MS)


@pytest.mark.parametrize("days_ago", [0, 2, 4, 6.9])
def test_an_id_applied_within_the_window_is_a_duplicate(
    store: RedisStore, redis_url: str, days_ago: float
) -> None:
    now_ms = time.time_ns() // 1_000_000
    then = now_ms - int(days_ago * DAY_MS)
    assert not store.write(receipt_write(redis_url, "M-1", ["e-1", "e-2"], then), then)
    assert store.read(["M-1"], {"M-1": ["e-1", "e-2", "e-3"]}).seen == {"e-1", "e-2"}


def test_an_id_applied_before_the_window_is_new_again(store: RedisStore, redis_url: str) -> None:
    now_ms = time.time_ns() // 1_000_000
    then = now_ms - 11 * DAY_MS  # its bucket ended more than the window ago
    assert not store.write(receipt_write(redis_url, "M-1", ["e-old"], then), then)
    assert store.read(["M-1"], {"M-1": ["e-old"]}).seen == frozenset()


def test_marks_are_an_intset_that_expires_a_window_after_its_bucket(
    store: RedisStore, redis_url: str
) -> None:
    now_ms = time.time_ns() // 1_000_000
    ids = [f"e-{n}" for n in range(300)]
    assert not store.write(receipt_write(redis_url, "M-1", ids, now_ms), now_ms)
    bucket = now_ms // keys.MARKS_BUCKET_MS
    key = keys.SINGLE.marks_key("M-1", bucket)
    client = store.client
    assert client.scard(key) == 300
    assert client.object("encoding", key) == b"intset"  # 8 bytes an id
    expires = client.pexpiretime(key)
    assert expires == (bucket + 1) * keys.MARKS_BUCKET_MS + WINDOW_MS


def test_a_rebuilt_shards_new_digest_key_refuses_writes_made_with_the_old(
    store: RedisStore, redis_url: str
) -> None:
    now_ms = time.time_ns() // 1_000_000
    assert not store.write(receipt_write(redis_url, "M-1", ["e-1"], now_ms), now_ms)
    # As `atp rebuild` does: every key goes, the marks come back under a new digest key.
    rebuilt = RedisStore(redis.Redis.from_url(redis_url), "g", WINDOW_MS)
    rebuilt.client.flushall()
    rebuilt.set_marker("rebuilding")
    assert not rebuilt.write(receipt_write(redis_url, "M-1", ["e-1"], now_ms), now_ms)
    rebuilt.set_marker("rebuilt")

    # The consumer that still holds the old key is refused (it then reads again), and
    # its next read finds the rebuilt marks: e-1 stays applied once.
    with pytest.raises(DigestKeyChanged):
        store.write(receipt_write(redis_url, "M-1", ["e-2"], now_ms), now_ms)
    assert store.read(["M-1"], {"M-1": ["e-1", "e-2"]}).seen == {"e-1"}
    assert not store.write(receipt_write(redis_url, "M-1", ["e-2"], now_ms), now_ms)
    assert store.read(["M-1"], {"M-1": ["e-1", "e-2"]}).seen == {"e-1", "e-2"}

    # An API process that held the old key writes with the new one, at once.
    async def api_write() -> list[str]:
        client = aredis.Redis.from_url(redis_url)
        try:
            api = AsyncRedisStore(client, "g", WINDOW_MS)
            assert not await api.write(receipt_write(redis_url, "M-2", ["a-1"], now_ms), now_ms)
            rebuilt.client.delete(keys.SINGLE.digest_key(0))
            rebuilt.set_marker("rebuilt")  # a new digest key
            return await api.write(receipt_write(redis_url, "M-2", ["a-2"], now_ms), now_ms)
        finally:
            await client.aclose()

    assert asyncio.run(api_write()) == []
    store.digest_keys.forget()
    assert store.read(["M-2"], {"M-2": ["a-2"]}).seen == {"a-2"}
