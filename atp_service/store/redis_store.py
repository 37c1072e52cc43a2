"""The Redis adapter: read sku states and dedupe marks, apply a ChangeSet in one script.

Concurrency is optimistic: every sku hash carries a version; a write names the versions it
read and the script refuses the whole batch (before writing anything) if any moved, e.g.
because the API reserved stock meanwhile. The caller then re-reads and re-folds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, Final

import redis
import redis.asyncio as aredis

from allocation.kits import KitDefinition
from atp_service.orders import (
    StoredOrder,
    backordered_lines,
    current,
    decode_stored,
    encode_result,
)
from atp_service.store import keys
from atp_service.store.kit_records import AsyncKitRecords, KitRecords
from streams.changeset import ChangeSet, encode_outbox, projection_field
from streams.state import SkuState, load_state
from streams.store import ProjectionMissing, ServerReplaced, Snapshot

TRIM_EVERY: Final = 16
WRITE_SCRIPT: Final = resources.files("atp_service.store").joinpath("write.lua").read_text()


# One round trip for a whole batch's reads (a pipeline of one command per sku cost more in
# the client than the reads cost Redis). KEYS: per sku its hash and its dedupe set.
# ARGV: per sku the number of event_ids to look up, then those ids. Returns per sku version
# and state (false when absent), then the ids found among the dedupe marks. Flagged
# no-writes so it runs during a CLIENT PAUSE WRITE and on replicas, like the reads it replaces.
READ_SCRIPT: Final = """#!lua flags=no-writes
local out = {}
local found = {}
local a = 1
for k = 1, #KEYS, 2 do
  local got = redis.call('HMGET', KEYS[k], 'v', 's')
  out[#out + 1] = got[1]
  out[#out + 1] = got[2]
  local n = tonumber(ARGV[a])
  if n > 0 then
    local ids = {}
    for e = 1, n do ids[e] = ARGV[a + e] end
    local scores = redis.call('ZMSCORE', KEYS[k + 1], unpack(ids))
    for e = 1, n do
      if scores[e] then found[#found + 1] = ids[e] end
    end
  end
  a = a + 1 + n
end
out[#out + 1] = found
return out
"""
REPLACED: Final = b"\x1freplaced"  # the write script's answer when its server changed
FULL: Final = b"\x1fcapacity"  # ... when a location's count for the day would pass its capacity
READ_CHUNK: Final = 2000  # skus per script call: bounds the time Redis is busy with one


def script_arguments(
    changes: ChangeSet, *, group_id: str, now_ms: int, seen_cutoff_ms: int, publish: bool = True
) -> tuple[list[str], list[Any]]:
    key_list = [
        keys.DUE,
        keys.offsets_key(group_id),
        keys.OUTBOX,
        keys.INITIALIZED,
        keys.LEDGER_STAGED,
    ]
    args: list[Any] = [
        len(changes.skus), seen_cutoff_ms, now_ms, keys.INVALIDATIONS if publish else "",
        changes.assumed_server,
    ]  # fmt: skip
    # Every sku writes the same projection fields (one per channel): names once, then
    # only the values per sku.
    names = tuple(changes.skus[0].fields) if changes.skus else ()
    args.append(len(names))
    args += names
    puts = list(changes.puts)
    for (sku, order_id, line_id), fields in changes.line_fields.items():
        line = keys.line_key(sku, order_id, line_id)
        puts += [(line, f"h:{name}", value) for name, value in fields.items()]
    if changes.capacity:
        day = keys.capacity_key(changes.capacity_day)
        puts += [
            (day, f"c\x1f{limit}\x1f{location}", str(units).encode())
            for location, (units, limit) in changes.capacity.items()
        ]
    args.append(len(puts))
    for key, mode, value in puts:
        key_list.append(key)
        args.append(mode)
        args.append(value)
    streams: dict[str, list[str]] = {}
    for channel, sku in changes.changed:
        streams.setdefault(channel, []).append(sku)
    args.append(len(streams))
    min_id = max(0, now_ms - keys.CHANGES_RETENTION_MS)
    for channel, skus in streams.items():
        key_list.append(keys.changes_key(channel))
        args += [min_id, len(skus), *skus]
    args.append(len(changes.offsets))
    for name, offset in changes.offsets.items():
        args += [name, offset]
    if changes.outbox:
        args += [changes.outbox_id, encode_outbox(changes.outbox)]
    else:
        args += ["", ""]
    args.append(len(changes.ledger))
    for name, rows in changes.ledger.items():
        args += [name, rows]
    args.append(len(changes.marked))
    for ids in changes.marked.values():
        args.append(len(ids))
        args += ids
    args.append(len(changes.checks))
    if changes.checks:
        index = {write.sku: i for i, write in enumerate(changes.skus, 1)}
        for _, version, owner in changes.checks:
            args += [version, index[owner]]
    for write in changes.skus:
        key_list += [keys.sku_key(write.sku), keys.seen_key(write.sku)]
        args += [
            "" if write.expected_version is None else write.expected_version,
            write.state,
            "" if write.due_ms is None else write.due_ms,
        ]
        if tuple(write.fields) != names:
            raise ValueError(f"sku {write.sku}: projection fields differ from the batch's")
        args += write.fields.values()
        args.append(len(write.seen))
        args += write.seen
        # Trimming the dedupe marks is O(log n) but not free; doing it on about one write in
        # TRIM_EVERY keeps every set within the window plus a few writes' worth of marks.
        args.append("1" if write.seen and random.random() < 1 / TRIM_EVERY else "0")
    key_list += [keys.seen_key(sku) for sku in changes.marked]
    key_list += [keys.sku_key(sku) for sku, _, _ in changes.checks]
    key_list.append(keys.KITS)
    return key_list, args


def read_calls(
    skus: Sequence[str], event_ids: Mapping[str, Sequence[str]]
) -> Iterator[tuple[list[str], list[Any]]]:
    """The read script's keys and arguments, a call per READ_CHUNK skus."""
    for start in range(0, len(skus), READ_CHUNK):
        key_list: list[str] = []
        args: list[Any] = []
        for sku in skus[start : start + READ_CHUNK]:
            key_list += [keys.sku_key(sku), keys.seen_key(sku)]
            ids = event_ids.get(sku, ())
            args.append(len(ids))
            args += ids
        yield key_list, args


def _snapshot(skus: Sequence[str], replies: Sequence[list[Any]]) -> Snapshot:
    states: dict[str, SkuState] = {}
    versions: dict[str, int] = {}
    seen: set[str] = set()
    at = 0
    for reply in replies:
        found = reply[-1]
        for r in range(0, len(reply) - 1, 2):
            sku = skus[at]
            at += 1
            version = reply[r]
            versions[sku] = int(version) if version is not None else 0
            states[sku] = load_state(sku, reply[r + 1])
        seen.update(event_id.decode() for event_id in found)
    return Snapshot(states, versions, frozenset(seen))


class PutExists(Exception):
    """An 'nx' put of the write found its key already there; nothing was written."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _conflicts(changes: ChangeSet, reply: list[Any]) -> list[str]:
    out = []
    for item in reply:
        if item == REPLACED:
            raise ServerReplaced(
                "the Redis server is not the one the write's assumptions came from"
            )
        if item == FULL:  # the counts moved since they were read: read them again
            return [write.sku for write in changes.skus]
        if isinstance(item, bytes):  # a sku whose marks lack an id taken as applied
            out.append(item.decode())
            continue
        index = int(item)
        if index == 0:
            raise ProjectionMissing("redis holds no projection marker")
        if index < 0:
            raise PutExists(changes.puts[-index - 1][0])
        out.append(changes.skus[index - 1].sku)
    return out


def capacity_counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


class RedisStore:
    """Synchronous adapter, used by the consumer and the command-line tools
    (streams.store.Store)."""

    transient_errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)

    def __init__(self, client: redis.Redis, group_id: str, window_ms: int) -> None:
        self.client = client
        self.group_id = group_id
        self.window_ms = window_ms
        self._write = client.register_script(WRITE_SCRIPT)
        self._read = client.register_script(READ_SCRIPT)
        self.kit_records = KitRecords(client)

    def read(
        self, skus: Sequence[str], event_ids: Mapping[str, Sequence[str]] | None = None
    ) -> Snapshot:
        replies = [self._read(keys=k, args=a) for k, a in read_calls(skus, event_ids or {})]
        return _snapshot(skus, replies)

    def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        """Apply atomically; returns the skus whose version moved (nothing was written then)."""
        if not changes.skus and not changes.offsets:
            return []
        key_list, args = script_arguments(
            changes, group_id=self.group_id, now_ms=now_ms, seen_cutoff_ms=now_ms - self.window_ms
        )
        return _conflicts(changes, self._write(keys=key_list, args=args))

    def server_id(self) -> str:
        """The server's run_id, which changes when it restarts or a replica takes over."""
        info: dict[str, Any] = self.client.info("server")
        return str(info["run_id"])

    def marker(self) -> str | None:
        value = self.client.get(keys.INITIALIZED)
        return value.decode() if isinstance(value, bytes) else None

    def mark_initialized(self, how: str) -> None:
        self.client.set(keys.INITIALIZED, how, nx=True)

    def put_snapshot(self, instance: str, payload: bytes, ttl_s: int = 30) -> None:
        key = keys.consumers_key(self.group_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, instance, payload)
        pipe.expire(key, ttl_s)
        pipe.execute()

    def offsets(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(keys.offsets_key(self.group_id))  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    def due(self, now_ms: int, limit: int) -> list[str]:
        found: list[bytes] = self.client.zrangebyscore(keys.DUE, "-inf", now_ms, start=0, num=limit)  # type: ignore[assignment]
        return [sku.decode() for sku in found]

    def kits(self, skus: Sequence[str]) -> dict[str, KitDefinition]:
        return self.kit_records.of(skus)

    def install_kits(self, configured: Sequence[KitDefinition], now_ms: int) -> int:
        return self.kit_records.install(configured, now_ms)

    def capacity_used(self, day: int) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(keys.capacity_key(day))  # type: ignore[assignment]
        return capacity_counts(raw)

    def outbox(self, limit: int) -> dict[str, bytes]:
        """Waiting writes' availability events: one HSCAN page of about ``limit`` entries (the
        whole outbox while it is small), sorted oldest first."""
        reply: tuple[int, dict[bytes, bytes]] = self.client.hscan(keys.OUTBOX, 0, count=limit)  # type: ignore[assignment]
        return {k.decode(): v for k, v in sorted(reply[1].items())}

    def documents(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        pipe = self.client.pipeline(transaction=False)
        for channel, sku in pairs:
            pipe.hget(keys.sku_key(sku), projection_field(channel))
        found: list[bytes | None] = pipe.execute()
        return {pair: doc for pair, doc in zip(pairs, found, strict=True) if doc is not None}

    def staged_ledger(self) -> dict[str, bytes]:
        """Ledger rows written with their batch, not yet moved to a ledger file."""
        raw: dict[bytes, bytes] = self.client.hgetall(keys.LEDGER_STAGED)  # type: ignore[assignment]
        return {k.decode(): v for k, v in raw.items()}

    def drop_staged_ledger(self, names: Sequence[str]) -> None:
        for start in range(0, len(names), 1000):
            self.client.hdel(keys.LEDGER_STAGED, *names[start : start + 1000])

    def ack_outbox(self, outbox_ids: Sequence[str]) -> int:
        """Forget writes whose availability events the broker acknowledged, every one."""
        return int(self.client.hdel(keys.OUTBOX, *outbox_ids)) if outbox_ids else 0

    def order_results(self, order_ids: Sequence[str]) -> dict[str, bytes]:
        """The results, as planned now (JSON), of those orders that exist: two round trips
        for any number of orders."""
        if not order_ids:
            return {}
        found: list[bytes | None] = self.client.mget([keys.order_key(o) for o in order_ids])  # type: ignore[assignment]
        stored = {o: decode_stored(raw) for o, raw in zip(order_ids, found, strict=True) if raw}
        wanted = [(o, line) for o, order in stored.items() for line in backordered_lines(order)]
        pipe = self.client.pipeline(transaction=False)
        for order_id, line in wanted:
            pipe.hgetall(keys.line_key(line.sku, order_id, line.line_id))
        replies: list[dict[bytes, bytes]] = pipe.execute() if wanted else []
        lines: dict[str, dict[str, dict[bytes, bytes]]] = {}
        for (order_id, line), fields in zip(wanted, replies, strict=True):
            lines.setdefault(order_id, {})[line.line_id] = fields
        return {
            o: encode_result(current(order, lines.get(o, {})).result) for o, order in stored.items()
        }


class AsyncRedisStore:
    """The same operations for the API's event loop."""

    def __init__(self, client: aredis.Redis, group_id: str, window_ms: int) -> None:
        self.client = client
        self.group_id = group_id
        self.window_ms = window_ms
        self._write = client.register_script(WRITE_SCRIPT)
        self._read = client.register_script(READ_SCRIPT)
        self.kit_records = AsyncKitRecords(client)

    async def read(self, skus: Sequence[str]) -> Snapshot:
        replies = [await self._read(keys=k, args=a) for k, a in read_calls(skus, {})]
        return _snapshot(skus, replies)

    async def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        key_list, args = script_arguments(
            changes, group_id=self.group_id, now_ms=now_ms, seen_cutoff_ms=now_ms - self.window_ms
        )
        return _conflicts(changes, await self._write(keys=key_list, args=args))

    async def capacity_used(self, day: int) -> dict[str, int]:
        """Location -> units its stock allocations took on that UTC day."""
        raw: dict[bytes, bytes] = await self.client.hgetall(keys.capacity_key(day))  # type: ignore[assignment]
        return capacity_counts(raw)

    async def orders(self, order_ids: Sequence[str]) -> list[StoredOrder | None]:
        """The stored orders as planned now (their backorders re-planned since), or None."""
        if not order_ids:
            return []
        found: list[bytes | None] = await self.client.mget([keys.order_key(o) for o in order_ids])  # type: ignore[assignment]
        stored = [decode_stored(raw) if raw else None for raw in found]
        wanted = [
            (i, line)
            for i, order in enumerate(stored)
            if order is not None and order.result.status != "released"
            for line in backordered_lines(order)
        ]
        if not wanted:
            return stored
        pipe = self.client.pipeline(transaction=False)
        for i, line in wanted:
            pipe.hgetall(keys.line_key(line.sku, order_ids[i], line.line_id))
        replies: list[dict[bytes, bytes]] = await pipe.execute()
        per_order: dict[int, dict[str, dict[bytes, bytes]]] = {}
        for (i, line), fields in zip(wanted, replies, strict=True):
            per_order.setdefault(i, {})[line.line_id] = fields
        return [
            current(order, per_order[i]) if order is not None and i in per_order else order
            for i, order in enumerate(stored)
        ]
