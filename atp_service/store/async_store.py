"""The asynchronous Redis adapter of the API: reads, writes of allocations (one script per
shard), order results and capacity counts, with the same scripts as ``RedisStore``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import redis.asyncio as aredis

from atp_service.orders import (
    StoredOrder,
    current,
)
from atp_service.store import keys
from atp_service.store.capacity import AsyncClaims, capacity_counts
from atp_service.store.keys import SpansShards
from atp_service.store.kit_records import AsyncKitRecords
from atp_service.store.marks import DigestKeyChanged, DigestKeys
from atp_service.store.order_lines import line_fields, line_records, lines_of, stored_order
from atp_service.store.read_plan import READ_SCRIPT, read_calls, snapshot_of
from atp_service.store.write_plan import (
    WRITE_SCRIPT,
    refused_skus,
    script_arguments,
    split,
    write_calls,
)
from streams.changeset import (
    ChangeSet,
)
from streams.store import Snapshot

T = TypeVar("T")


class AsyncRedisStore:
    """The same operations for the API's event loop."""

    def __init__(
        self,
        client: aredis.Redis,
        group_id: str,
        window_ms: int,
        layout: keys.Layout = keys.SINGLE,
        cluster: bool = False,
    ) -> None:
        self.client = client
        self.group_id = group_id
        self.window_ms = window_ms
        self.layout = layout
        self.cluster = cluster
        self.digest_keys = DigestKeys(layout)
        self._write = client.register_script(WRITE_SCRIPT)
        self._read = client.register_script(READ_SCRIPT)
        self.kit_records = AsyncKitRecords(client, layout)
        self.claims = AsyncClaims(client, layout)

    async def read(self, skus: Sequence[str]) -> Snapshot:
        replies = [
            (call, await self._read(keys=call.keys, args=call.args))
            for call in read_calls(skus, {}, self.layout)
        ]
        return snapshot_of(replies)

    async def _written(self, write: Callable[[Sequence[bytes | None]], Awaitable[T]]) -> T:
        """``write`` with the shards' digest keys, once more with them read again if a shard
        was rebuilt since they were read (its key changed)."""
        try:
            return await write(await self.digest_keys.of_async(self.client))
        except DigestKeyChanged:
            self.digest_keys.forget()
            return await write(await self.digest_keys.of_async(self.client))

    async def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        """As RedisStore.write, for an API write of one shard (it moves no offsets): the
        skus whose version moved, or []. A write over several shards goes through
        ``write_each`` (atp_service/sharded_allocator.py)."""
        parts = split(changes, self.layout)
        if len(parts) > 1:
            raise SpansShards("an API write over several shards")
        if self.layout.shards > 1 and changes.claims and not await self.claims.claim(changes):
            return [write.sku for write in changes.skus]  # counts moved: read them again
        ((shard, part),) = parts

        async def attempt(digest_keys: Sequence[bytes | None]) -> list[str]:
            key_list, args = script_arguments(
                part, group_id=self.group_id, now_ms=now_ms,
                seen_cutoff_ms=now_ms - self.window_ms, layout=self.layout, shard=shard,
                digest_key=digest_keys[shard],
            )  # fmt: skip
            return refused_skus(part, await self._write(keys=key_list, args=args))

        return await self._written(attempt)

    async def write_each(self, changes: ChangeSet, now_ms: int) -> list[str]:
        """Write each shard's part on its own (no keys of no shard): the skus of the parts
        refused because a sku moved; every other part landed. Capacity is claimed first:
        when a location would pass it, every sku is named and nothing is written."""
        if self.layout.shards > 1 and changes.claims and not await self.claims.claim(changes):
            return [write.sku for write in changes.skus]
        pending = [(shard, part, "") for shard, part in split(changes, self.layout)]
        moved: list[str] = []

        async def attempt(digest_keys: Sequence[bytes | None]) -> list[str]:
            calls = write_calls(
                pending, layout=self.layout, group_id=self.group_id, now_ms=now_ms,
                window_ms=self.window_ms, digest_keys=digest_keys,
            )  # fmt: skip
            replies = await asyncio.gather(*(self._write(keys=k, args=a) for k, a in calls))
            refused = []  # for their digest key: sent again, with the shards' keys read again
            for sent, reply in zip(list(pending), replies, strict=True):
                try:
                    if refused_skus(sent[1], reply):
                        moved.extend(write.sku for write in sent[1].skus)
                except DigestKeyChanged:
                    refused.append(sent)
            pending[:] = refused
            if refused:
                raise DigestKeyChanged("a shard's digest key is not the one the write's came from")
            return moved

        return await self._written(attempt)

    async def capacity_used(self, day: int) -> dict[str, int]:
        """Location -> units its stock allocations took on that UTC day."""
        raw: dict[bytes, bytes] = await self.client.hgetall(self.layout.capacity_key(day))  # type: ignore[assignment]
        return capacity_counts(raw)

    async def orders(self, order_ids: Sequence[str]) -> list[StoredOrder | None]:
        """The stored orders as planned now (their backorders re-planned since), or None."""
        if not order_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for order_id in order_ids:
            pipe.get(self.layout.order_key(order_id))
        found: list[bytes | None] = await pipe.execute()
        stored = [stored_order(raw) for raw in found]
        fields = line_fields(
            (o, order) for o, order in zip(order_ids, stored, strict=True) if order is not None
        )
        if not fields:
            return stored
        pipe = self.client.pipeline(transaction=False)
        for sku, names in fields.items():
            pipe.hmget(self.layout.lines_key(sku), names)
        lines = line_records(fields, await pipe.execute())
        return [
            current(order, lines_of(o, order, lines)) if order is not None else None
            for o, order in zip(order_ids, stored, strict=True)
        ]
