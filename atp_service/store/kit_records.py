"""Kit definitions in Redis (contract section 10).

One hash (keys.KITS) holds a record per kit sku, and each component sku has a hash of the
kits it belongs to (Layout.kits_of_key), which the write script reads to count those kits
due when the component is written. A record set over HTTP wins over the config file's: `atp
consume` installs the file's kits at start where no HTTP record exists. A kit deleted over
HTTP keeps a record with no components, so that the file's definition does not come back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import msgspec
import redis
import redis.asyncio as aredis

from allocation.kits import KitComponent, KitDefinition
from atp_service.store import keys

Source = Literal["config", "api"]


class KitRecord(msgspec.Struct, frozen=True):
    sku: str
    components: tuple[KitComponent, ...]  # () : deleted over HTTP
    source: Source
    # Changes of this sku's record over HTTP, counted in the write that made them: the
    # order of those changes on the overrides topic (atp_service/overrides.py).
    seq: int = 0

    def definition(self) -> KitDefinition | None:
        return KitDefinition(self.sku, self.components) if self.components else None


class SeqMoved(Exception):
    """The kit's record changed since it was read; read and decide again."""


_decoder: Final = msgspec.json.Decoder(KitRecord)

# A change of a kit's record touches keys in several shards (the kit's, its components'),
# so it goes in steps whose order keeps every write of a component counted for the kit
# (write.lua) whenever the record names it:
# 1. the new record's components name the kit in their hashes of kits (Layout.kits_of_key),
#    tagged with the version all kits will have once the record is set;
# 2. the record is set, only if neither it nor that version moved since they were read;
# 3. components the record no longer lists forget the kit, unless a later change tagged
#    them again;
# 4. the kit is due in its own shard and its version moves, so that a sweep that computed
#    it from the record before (2) is refused, and it is computed from the new one.
# A writer that dies between steps leaves at most a component that names a kit it is no
# longer part of (the kit is computed needlessly when it is written), or a kit not yet
# computed from its new record: `atp consume` marks every kit due when it starts.

# KEYS: 1 the kits hash, 2 the version of all kits. ARGV: 1 kit sku, 2 its record as read
# ('' = none), 3 the version as read, 4 the new record ('' removes it). Returns the new
# version, or 0 when the record or the version moved since they were read.
_RECORD: Final = """
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2]
    or (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then
  return 0
end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
end
return redis.call('INCR', KEYS[2])
"""

# KEYS: 1 the shard's 'kits' flag, then hashes of kits of components in that shard. ARGV:
# 1 kit sku, 2 the version tag, 3 '1' (name the kit, or tag it again) or '0' (forget it
# where no later change tagged it).
_MEMBERS: Final = """
local tag = tonumber(ARGV[2])
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], '1')
end
for k = 2, #KEYS do
  local was = tonumber(redis.call('HGET', KEYS[k], ARGV[1]) or '-1')
  if ARGV[3] == '1' and was < tag then
    redis.call('HSET', KEYS[k], ARGV[1], tag)
  elseif ARGV[3] == '0' and was >= 0 and was <= tag then
    redis.call('HDEL', KEYS[k], ARGV[1])
  end
end
return 0
"""

# KEYS: 1 the due zset of the kit's shard, 2 the kit sku's hash. ARGV: 1 now (ms), 2 kit.
_DUE: Final = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'v', 1)
return 0
"""
_RETRIES: Final = 10


class _Put(msgspec.Struct, frozen=True):
    """The script calls of one change of a kit's record, read at ``version``."""

    name: list[tuple[list[str], list[Any]]]
    record: tuple[list[str], list[Any]]
    forget: list[tuple[list[str], list[Any]]]
    due: tuple[list[str], list[Any]]


def _put_calls(
    layout: keys.Layout,
    sku: str,
    old_raw: bytes | None,
    version: int,
    record: KitRecord | None,
    now_ms: int,
) -> _Put:
    old = _decoder.decode(old_raw) if old_raw else None
    new = {c.sku for c in record.components} if record is not None else set()
    gone = {c.sku for c in old.components} - new if old is not None else set()
    tag = version + 1

    def by_shard(skus: set[str], add: bool) -> list[tuple[list[str], list[Any]]]:
        groups: dict[int, list[str]] = {}
        for c in sorted(skus):
            groups.setdefault(layout.shard(c), []).append(layout.kits_of_key(c))
        return [
            ([layout.kits_flag_key(shard), *found], [sku, tag, "1" if add else "0"])
            for shard, found in sorted(groups.items())
        ]

    payload = msgspec.json.encode(record) if record is not None else b""
    return _Put(
        by_shard(new, True),
        ([keys.KITS, keys.KITS_VERSION], [sku, old_raw or b"", version, payload]),
        by_shard(gone, False),
        ([layout.due_key(layout.shard(sku)), layout.sku_key(sku)], [now_ms, sku]),
    )


def _check_seq(raw: bytes | None, sku: str, expected_seq: int | None) -> None:
    """SeqMoved when ``expected_seq`` is given and the record read has another."""
    if expected_seq is None:
        return
    seq = _decoder.decode(raw).seq if raw else 0
    if seq != expected_seq:
        raise SeqMoved(sku)


def _repairs(
    layout: keys.Layout, records: Iterable[KitRecord], version: int
) -> list[tuple[str, str, str]]:
    """(hash of kits, kit, tag) naming every kit in force in its components' hashes, at
    ``version`` (read before the records), where they do not name it already: a tag a
    change set meanwhile stays, so that no older change's late step can remove it."""
    return [
        (layout.kits_of_key(c.sku), record.sku, str(version))
        for record in records
        for c in record.components
    ]


def decode_records(raw: Mapping[bytes, bytes]) -> dict[str, KitRecord]:
    return {k.decode(): _decoder.decode(v) for k, v in raw.items()}


def definitions(records: Iterable[KitRecord]) -> dict[str, KitDefinition]:
    """The kits in force among ``records``."""
    out = {}
    for record in records:
        kit = record.definition()
        if kit is not None:
            out[kit.sku] = kit
    return out


class KitRecords:
    """Synchronous access, for the consumer and the command-line tools."""

    def __init__(self, client: redis.Redis, layout: keys.Layout = keys.SINGLE) -> None:
        self.client = client
        self.layout = layout
        self._record = client.register_script(_RECORD)
        self._members = client.register_script(_MEMBERS)
        self._due = client.register_script(_DUE)

    def record(self, sku: str) -> KitRecord | None:
        raw = self.client.hget(keys.KITS, sku)
        return _decoder.decode(raw) if isinstance(raw, bytes) else None

    def _read(self, sku: str) -> tuple[bytes | None, int]:
        """The version of all kits, then the record: a change between the two fails the
        record's step."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.KITS_VERSION)
        pipe.hget(keys.KITS, sku)
        version, raw = pipe.execute()
        return raw, int(version or 0)

    def all(self) -> dict[str, KitRecord]:
        raw: dict[bytes, bytes] = self.client.hgetall(keys.KITS)  # type: ignore[assignment]
        return decode_records(raw)

    def of(self, skus: Sequence[str]) -> dict[str, KitDefinition]:
        """The kits in force among ``skus``."""
        if not skus:
            return {}
        found: list[bytes | None] = self.client.hmget(keys.KITS, list(skus))  # type: ignore[assignment]
        return definitions(_decoder.decode(raw) for raw in found if raw)

    def put(
        self, sku: str, record: KitRecord | None, now_ms: int, expected_seq: int | None = None
    ) -> None:
        """Set (None: remove) the record of ``sku`` and mark the kit due. SeqMoved if
        ``expected_seq`` is given and the record's seq is another."""
        for _ in range(_RETRIES):
            raw, version = self._read(sku)
            _check_seq(raw, sku, expected_seq)
            calls = _put_calls(self.layout, sku, raw, version, record, now_ms)
            for key_list, args in calls.name:
                self._members(keys=key_list, args=args)
            if not int(self._record(keys=calls.record[0], args=calls.record[1])):
                continue
            for key_list, args in calls.forget:
                self._members(keys=key_list, args=args)
            self._due(keys=calls.due[0], args=calls.due[1])
            return
        raise SeqMoved(sku)

    def install(self, configured: Sequence[KitDefinition], now_ms: int) -> int:
        """Make the config file's kits the ones in force, except where HTTP set a record:
        add or change them, and remove the records of kits the file no longer lists. Then
        every kit in force is named by its components and due. Returns how many records
        changed."""
        wanted = {kit.sku: kit for kit in configured}
        changed = 0
        for _ in range(10):  # again when an HTTP change landed meanwhile
            records = self.all()
            try:
                for sku, kit in wanted.items():
                    old = records.get(sku)
                    if old is not None and (
                        old.source == "api" or old.components == kit.components
                    ):
                        continue
                    seq = old.seq if old is not None else 0
                    self.put(sku, KitRecord(sku, kit.components, "config", seq), now_ms, seq)
                    changed += 1
                for sku, old in records.items():
                    if old.source == "config" and sku not in wanted:
                        self.put(sku, None, now_ms, old.seq)
                        changed += 1
            except SeqMoved:
                continue
            self._repair(now_ms)
            return changed
        raise SeqMoved("kits changed over HTTP while the config file's were installed")

    def _repair(self, now_ms: int) -> None:
        """What a writer that died between the steps of a change may have left undone."""
        version = int(self.client.get(keys.KITS_VERSION) or 0)
        records = [r for r in self.all().values() if r.components]
        pipe = self.client.pipeline(transaction=False)
        for key, kit, tag in _repairs(self.layout, records, version):
            pipe.hsetnx(key, kit, tag)
        for shard in {self.layout.shard(c.sku) for r in records for c in r.components}:
            pipe.set(self.layout.kits_flag_key(shard), "1")
        for record in records:
            pipe.zadd(self.layout.due_key(self.layout.shard(record.sku)), {record.sku: now_ms})
        pipe.execute()


class AsyncKitRecords:
    """The same for the API."""

    def __init__(self, client: aredis.Redis, layout: keys.Layout = keys.SINGLE) -> None:
        self.client = client
        self.layout = layout
        self._record = client.register_script(_RECORD)
        self._members = client.register_script(_MEMBERS)
        self._due = client.register_script(_DUE)

    async def record(self, sku: str) -> KitRecord | None:
        raw = await self.client.hget(keys.KITS, sku)
        return _decoder.decode(raw) if isinstance(raw, bytes) else None

    async def _read(self, sku: str) -> tuple[bytes | None, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.KITS_VERSION)
        pipe.hget(keys.KITS, sku)
        version, raw = await pipe.execute()
        return raw, int(version or 0)

    async def all(self) -> tuple[dict[str, KitRecord], int]:
        """Every record, and the version of all kits read before them (a change between
        the two is refused to a put that names that version)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.KITS_VERSION)
        pipe.hgetall(keys.KITS)
        version, raw = await pipe.execute()
        return decode_records(raw), int(version or 0)

    async def of(self, skus: Sequence[str]) -> dict[str, KitDefinition]:
        if not skus:
            return {}
        found: list[bytes | None] = await self.client.hmget(keys.KITS, list(skus))  # type: ignore[assignment]
        return definitions(_decoder.decode(raw) for raw in found if raw)

    async def put(
        self,
        sku: str,
        record: KitRecord | None,
        now_ms: int,
        expected_seq: int | None = None,
        expected_version: int | None = None,
    ) -> None:
        """As ``KitRecords.put``; SeqMoved also if any kit changed since ``expected_version``."""
        for _ in range(_RETRIES):
            raw, version = await self._read(sku)
            _check_seq(raw, sku, expected_seq)
            if expected_version is not None and version != expected_version:
                raise SeqMoved(sku)
            calls = _put_calls(self.layout, sku, raw, version, record, now_ms)
            for key_list, args in calls.name:
                await self._members(keys=key_list, args=args)
            if not int(await self._record(keys=calls.record[0], args=calls.record[1])):
                continue
            for key_list, args in calls.forget:
                await self._members(keys=key_list, args=args)
            await self._due(keys=calls.due[0], args=calls.due[1])
            return
        raise SeqMoved(sku)
