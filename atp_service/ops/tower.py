"""The control tower's figures, gathered from Redis for `GET /v1/ops/*` (and `/ui`) and for
`atp report`: async gatherers over a ``redis.asyncio`` client (:func:`gather_summary`,
:func:`gather_sku`, and :class:`Tower`, which caches the summary for a few seconds), around
the pure functions of ``atp_service.ops.views``. `atp report` runs the same gatherers under
``asyncio.run``.

Scale: the summary is scan based. It SCANs the sku hashes (``atp:v1:{sku}``) and reads each
one's state and projection documents, at most ``max_skus`` (200 000 by default) per call;
beyond that the figures are marked ``truncated``. That is fine for tens of thousands of skus
with a short cache in front; at millions of skus it needs maintained indexes instead (for
example per-channel sets of skus at zero / under safety stock and a sorted set of open
reservations, written by the consumer's write script).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import msgspec
import redis.asyncio as aredis

from atp_service.config import Settings
from atp_service.ops.views import Row, SkuView, Summary, sku_of, sku_view, summarize
from atp_service.store import keys
from atp_service.store.capacity import capacity_counts
from atp_service.store.kit_records import AsyncKitRecords, definitions
from streams.changeset import projection_field
from streams.snapshot import ConsumerSnapshot, decode_snapshot
from streams.state import US_PER_DAY

MAX_SKUS: Final = 200_000
CACHE_S: Final = 3.0
_SCAN_COUNT: Final = 1000


# -- I/O ---------------------------------------------------------------------------------


async def _snapshots(client: aredis.Redis, group_id: str) -> list[ConsumerSnapshot]:
    raw: dict[bytes, bytes] = await client.hgetall(keys.consumers_key(group_id))  # type: ignore[assignment]
    out: list[ConsumerSnapshot] = []
    for payload in raw.values():
        try:
            out.append(decode_snapshot(payload))
        except msgspec.DecodeError:
            continue  # a snapshot of another version: ignore rather than fail the page
    return out


async def gather_summary(
    client: aredis.Redis, settings: Settings, max_skus: int = MAX_SKUS
) -> Summary:
    """SCAN at most ``max_skus`` sku hashes and summarize them with the consumer snapshots."""
    names = [c.name for c in settings.channels]
    fields = [keys.STATE_FIELD, *(projection_field(n) for n in names)]
    layout = keys.Layout(settings.redis.shard_count)
    rows: list[Row] = []
    truncated = False
    batch: list[str] = []

    async def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for sku in batch:
            pipe.hmget(layout.sku_key(sku), fields)
        for sku, values in zip(batch, await pipe.execute(), strict=True):
            state, *docs = values
            documents = {n: d for n, d in zip(names, docs, strict=True) if d is not None}
            if state is not None or documents:
                rows.append(Row(sku, state, documents))
        batch.clear()

    seen: set[str] = set()  # SCAN may return a key more than once
    async for key in client.scan_iter(match=keys.SKU_PATTERN, count=_SCAN_COUNT, _type="HASH"):
        sku = sku_of(key)
        if sku is None or sku in seen:
            continue
        if len(seen) >= max_skus:
            truncated = True
            break
        seen.add(sku)
        batch.append(sku)
        if len(batch) >= _SCAN_COUNT:
            await flush()
    if batch:
        await flush()
    snapshots = await _snapshots(client, settings.kafka.group_id)
    kits = definitions((await AsyncKitRecords(client, layout).all())[0].values())
    now = time.time()
    raw: dict[bytes, bytes] = await client.hgetall(
        layout.capacity_key(int(now * 1e6) // US_PER_DAY)
    )  # type: ignore[assignment]
    used = capacity_counts(raw)
    return summarize(settings, rows, snapshots, now, truncated, kits, used)


async def gather_sku(client: aredis.Redis, settings: Settings, sku: str) -> SkuView:
    names = [c.name for c in settings.channels]
    layout = keys.Layout(settings.redis.shard_count)
    values: list[bytes | None] = await client.hmget(  # type: ignore[assignment]
        layout.sku_key(sku), [keys.STATE_FIELD, *(projection_field(n) for n in names)]
    )
    state, *docs = values
    kit = (await AsyncKitRecords(client, layout).of([sku])).get(sku)
    return sku_view(settings, sku, state, dict(zip(names, docs, strict=True)), time.time(), kit)


class Tower:
    """The summary behind a short cache (``ttl_s``), one scan at a time per process."""

    def __init__(
        self,
        client: aredis.Redis,
        settings: Settings,
        ttl_s: float = CACHE_S,
        max_skus: int = MAX_SKUS,
    ) -> None:
        self.client = client
        self.settings = settings
        self.ttl_s = ttl_s
        self.max_skus = max_skus
        self._summary: Summary | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def summary(self) -> Summary:
        if self._summary is not None and time.monotonic() - self._at < self.ttl_s:
            return self._summary
        async with self._lock:  # concurrent callers wait for the one scan in flight
            if self._summary is not None and time.monotonic() - self._at < self.ttl_s:
                return self._summary
            self._summary = await gather_summary(self.client, self.settings, self.max_skus)
            self._at = time.monotonic()
            return self._summary

    async def sku(self, sku: str) -> SkuView:
        return await gather_sku(self.client, self.settings, sku)
