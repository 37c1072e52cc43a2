"""Kit definitions in Redis (contract section 10).

One hash (keys.KITS) holds a record per kit sku, and each component sku has the set of kits
it belongs to (Layout.kits_of_key), which the write script reads to mark those kits due when
the component is written. A record set over HTTP wins over the config file's: `atp
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

# KEYS: 1 the kits hash, 2 the due zset of the kit's shard, 3 the kit sku's hash, 4 the
# version of all kits, then per named component its set of kits, then per named component
# its shard's 'kits' flag (write.lua looks for kit sets only in shards that have one).
# ARGV: 1 kit sku, 2 the record (JSON; '' removes it), 3 now (ms), 4 the seq the record must
# have now ('' = unchecked), 5 the version all kits must have now ('' = unchecked), 6 n,
# then n component skus (those of the record now and of the new one), then n flags ('1':
# in the new record). Returns 1, 0 when the seq or the version moved, or -1 when a
# component of the record now is not named (it changed since it was read). The kit sku's
# version moves, so that a sweep computing the kit from the definition before this one is
# refused; the version of all kits moves, so that a definition checked against the others
# (no kit in a kit) is refused if another changed meanwhile. cjson is Redis's JSON.
_PUT: Final = """
if ARGV[5] ~= '' and (redis.call('GET', KEYS[4]) or '0') ~= ARGV[5] then
  return 0
end
local n = tonumber(ARGV[6])
local named = {}
for c = 1, n do
  named[ARGV[6 + c]] = c
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  old = cjson.decode(old)
  if ARGV[4] ~= '' and tostring(old['seq']) ~= ARGV[4] then
    return 0
  end
  for _, c in ipairs(old['components']) do
    if not named[c['sku']] then
      return -1
    end
  end
  for _, c in ipairs(old['components']) do
    redis.call('SREM', KEYS[4 + named[c['sku']]], ARGV[1])
  end
elseif ARGV[4] ~= '' and ARGV[4] ~= '0' then
  return 0
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
for c = 1, n do
  if ARGV[6 + n + c] == '1' then
    redis.call('SADD', KEYS[4 + c], ARGV[1])
    redis.call('SET', KEYS[4 + n + c], '1')
  end
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'v', 1)
redis.call('INCR', KEYS[4])
return 1
"""
_RETRIES: Final = 10


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


def _put_args(
    layout: keys.Layout,
    sku: str,
    record: KitRecord | None,
    now_ms: int,
    expected_seq: int | None,
    expected_version: int | None,
    old: KitRecord | None,
) -> tuple[list[str], list[Any]]:
    payload = msgspec.json.encode(record) if record is not None else b""
    new = {c.sku for c in record.components} if record is not None else set()
    named = sorted(new | ({c.sku for c in old.components} if old is not None else set()))
    seq = "" if expected_seq is None else str(expected_seq)
    version = "" if expected_version is None else str(expected_version)
    key_list = [
        keys.KITS,
        layout.due_key(layout.shard(sku)),
        layout.sku_key(sku),
        keys.KITS_VERSION,
    ]
    key_list += [layout.kits_of_key(c) for c in named]
    key_list += [layout.kits_flag_key(layout.shard(c)) for c in named]
    args: list[Any] = [sku, payload, now_ms, seq, version, len(named), *named]
    args += ["1" if c in new else "0" for c in named]
    return key_list, args


def _moved(reply: Any, sku: str) -> bool:
    """Whether the put must be tried again with the record read again (-1); SeqMoved when
    the seq or the version moved (0)."""
    if int(reply) == 0:
        raise SeqMoved(sku)
    return int(reply) < 0


class KitRecords:
    """Synchronous access, for the consumer and the command-line tools."""

    def __init__(
        self, client: redis.Redis, layout: keys.Layout = keys.SINGLE, cluster: bool = False
    ) -> None:
        self.client = client
        self.layout = layout
        self.cluster = cluster
        self._put = client.register_script(_PUT)

    def record(self, sku: str) -> KitRecord | None:
        raw = self.client.hget(keys.KITS, sku)
        return _decoder.decode(raw) if isinstance(raw, bytes) else None

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
        if self.cluster:
            raise keys.SpansShards("kit definitions")
        for _ in range(_RETRIES):
            old = self.record(sku)
            key_list, args = _put_args(self.layout, sku, record, now_ms, expected_seq, None, old)
            if not _moved(self._put(keys=key_list, args=args), sku):
                return
        raise SeqMoved(sku)

    def install(self, configured: Sequence[KitDefinition], now_ms: int) -> int:
        """Make the config file's kits the ones in force, except where HTTP set a record:
        add or change them, and remove the records of kits the file no longer lists.
        Returns how many records changed."""
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
            return changed
        raise SeqMoved("kits changed over HTTP while the config file's were installed")


class AsyncKitRecords:
    """The same for the API."""

    def __init__(
        self, client: aredis.Redis, layout: keys.Layout = keys.SINGLE, cluster: bool = False
    ) -> None:
        self.client = client
        self.layout = layout
        self.cluster = cluster
        self._put = client.register_script(_PUT)

    async def record(self, sku: str) -> KitRecord | None:
        raw = await self.client.hget(keys.KITS, sku)
        return _decoder.decode(raw) if isinstance(raw, bytes) else None

    async def all(self) -> tuple[dict[str, KitRecord], int]:
        """Every record, and the version of all kits they were read at."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(keys.KITS)
        pipe.get(keys.KITS_VERSION)
        raw, version = await pipe.execute()
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
        if self.cluster:
            raise keys.SpansShards("kit definitions")
        for _ in range(_RETRIES):
            old = await self.record(sku)
            key_list, args = _put_args(
                self.layout, sku, record, now_ms, expected_seq, expected_version, old
            )
            if not _moved(await self._put(keys=key_list, args=args), sku):
                return
        raise SeqMoved(sku)
