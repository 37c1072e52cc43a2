"""The Redis adapter: read sku states and dedupe marks, apply a ChangeSet in scripts of at
most ``skus_per_script`` skus per shard it touches (write_plan.py: ``split``, ``steps``;
streams/shards.py), sent by sending.py; reads by read_plan.py.

Concurrency is optimistic: every sku hash carries a version; a write names the versions it
read and a script refuses its skus (before writing anything) if any moved, e.g. because the
API reserved stock meanwhile. The caller then re-reads and re-folds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import pyarrow as pa
import redis

from allocation.kits import KitDefinition
from atp_service.orders import (
    current,
    encode_result,
)
from atp_service.store import keys
from atp_service.store.capacity import Claims, capacity_counts
from atp_service.store.kit_records import KitRecords
from atp_service.store.marks import DigestKeyChanged, DigestKeys, new_key
from atp_service.store.order_lines import line_fields, line_records, lines_of, stored_order
from atp_service.store.read_plan import READ_SCRIPT, read_calls, snapshot_of
from atp_service.store.sending import in_turn, pipelined
from atp_service.store.write_plan import (
    ROWS_INLINE_MAX,
    ROWS_REF,
    STEP_SEPARATOR,
    STEP_SKUS,
    WRITE_SCRIPT,
    refused_skus,
    skus_to_read_again,
    split,
    steps,
    write_calls,
    write_token,
)
from streams.changeset import (
    ChangeSet,
    decode_outbox,
    encode_outbox,
    projection_field,
)
from streams.consumer.options import offset_field
from streams.ledger import parse_staged_field, staged_rows, to_ipc
from streams.store import KitDue, Snapshot

# KEYS: 1 a shard's counts of kits due (``Layout.kits_due_key``). ARGV: (kit, count)
# pairs, each removed only while its count is still the one given: a component written
# since the count was read has the kit computed again.
KITS_COMPUTED_SCRIPT: Final = """
for a = 1, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[a]) or '-1') == tonumber(ARGV[a + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[a])
  end
end
return 0
"""

# Moves the group's offsets (one hash, KEYS[1]) forward only. ARGV: field, offset pairs.
ADVANCE_SCRIPT: Final = """
for i = 1, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1') then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""


def _merge_outbox(
    pages: Iterable[Mapping[bytes, bytes]], step_fields: dict[str, set[tuple[int, str]]]
) -> dict[str, bytes]:
    """One write's events are in the outbox of every shard it wrote, under one id, and of
    its first steps (``steps``) under that id and the step's number, which are noted in
    ``step_fields`` (id -> (shard, field)) for ``ack_outbox``."""
    merged: dict[str, bytes] = {}
    for shard, page in enumerate(pages):
        for raw_id, blob in page.items():
            outbox_id, _, step = raw_id.decode().partition(STEP_SEPARATOR)
            if step:
                step_fields.setdefault(outbox_id, set()).add((shard, raw_id.decode()))
            before = merged.get(outbox_id)
            if before is None:
                merged[outbox_id] = blob
            else:
                merged[outbox_id] = encode_outbox(dict(decode_outbox(before) + decode_outbox(blob)))
    return dict(sorted(merged.items()))


def _merge_staged(
    shards: Iterable[Mapping[bytes, bytes]], offsets: Mapping[str, int]
) -> dict[str, bytes]:
    """The staged ledger rows of every shard, those of batches every shard holds (below the
    group's offsets), one value per field."""
    tables: dict[str, list[pa.Table]] = {}
    for staged in shards:
        for raw_name, blob in staged.items():
            name = raw_name.decode()
            tables.setdefault(name, []).append(staged_rows(name, blob))
    out: dict[str, bytes] = {}
    for name, parts in tables.items():
        topic, partition, _ = parse_staged_field(name)
        below = offsets.get(offset_field(topic, partition), -1)
        if any(t.num_rows and t["source_offset"][-1].as_py() >= below for t in parts):
            continue  # a batch not yet written to every shard
        table = pa.concat_tables(parts)
        out[name] = to_ipc(table.sort_by("source_offset") if len(parts) > 1 else table)
    return out


def initialize(client: redis.Redis, layout: keys.Layout, how: str, replace: bool = False) -> None:
    """Mark every shard's projection ``how`` (only where it has none unless ``replace``),
    giving each shard that has no digest key (atp_service/store/marks.py) one."""
    pipe = client.pipeline(transaction=False)
    for shard in range(layout.shards):
        pipe.set(layout.digest_key(shard), new_key(), nx=True)
        pipe.set(layout.marker_key(shard), how, nx=not replace)
    pipe.execute()


class RedisStore:
    """Synchronous adapter, used by the consumer and the command-line tools
    (streams.store.Store). A write is one script per shard it touches (streams/shards.py);
    each is atomic and moves its shard's offsets, and once all landed the group's offsets
    move (with one shard they are the shard's)."""

    # RedisClusterException is no RedisError: the cluster client raises it while no node
    # serves a slot (the consumer waits it out).
    transient_errors: tuple[type[Exception], ...] = (
        redis.RedisError,
        redis.RedisClusterException,
        OSError,
    )

    def __init__(
        self,
        client: redis.Redis,
        group_id: str,
        window_ms: int,
        layout: keys.Layout = keys.SINGLE,
        cluster: bool = False,
        step_skus: int = STEP_SKUS,
    ) -> None:
        self.client = client
        self.group_id = group_id
        self.window_ms = window_ms
        self.layout = layout
        self.cluster = cluster
        self.step_skus = step_skus
        # Outbox fields of first steps, by write id, until the write's events are acknowledged.
        self._step_fields: dict[str, set[tuple[int, str]]] = {}
        self.digest_keys = DigestKeys(layout)
        self._write = client.register_script(WRITE_SCRIPT)
        self._read = client.register_script(READ_SCRIPT)
        self._advance = client.register_script(ADVANCE_SCRIPT)
        self._kits_computed = client.register_script(KITS_COMPUTED_SCRIPT)
        self.kit_records = KitRecords(client, layout)
        self.claims = Claims(client, layout)

    def _shards(self) -> range:
        return range(self.layout.shards)

    def read(
        self, skus: Sequence[str], event_ids: Mapping[str, Sequence[str]] | None = None
    ) -> Snapshot:
        found = self.digest_keys.of(self.client) if event_ids else ()
        calls = list(
            read_calls(
                skus, event_ids or {}, self.layout, digest_keys=found,
                now_ms=time.time_ns() // 1_000_000, window_ms=self.window_ms,
            )
        )  # fmt: skip
        if len(calls) == 1:
            return snapshot_of([(calls[0], self._read(keys=calls[0].keys, args=calls[0].args))])
        replies = pipelined(self.client, self._read, [(c.keys, c.args) for c in calls])
        return snapshot_of(list(zip(calls, replies, strict=True)))

    def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        """Apply per shard, in steps (``steps``); returns the skus whose version moved (then
        the parts and steps with none of them were written, and their skus are named too)."""
        if not changes.skus and not changes.offsets:
            return []
        if self.layout.shards > 1 and changes.claims and not self.claims.claim(changes):
            return [write.sku for write in changes.skus]  # counts moved: read them again
        shards = [
            (shard, self._assumed(part, shard)) for shard, part in split(changes, self.layout)
        ]
        parts, rows = self._rows_apart(steps(shards, self.step_skus))
        calls = write_calls(
            parts, layout=self.layout, group_id=self.group_id, now_ms=now_ms,
            window_ms=self.window_ms, offsets=changes.offsets,
            digest_keys=self.digest_keys.of(self.client),
        )  # fmt: skip
        try:
            if len(parts) == 1 and not rows:
                key_list, args = next(calls)
                reply = self._write(keys=key_list, args=args)
                conflicts = refused_skus(parts[0][1], reply)
            else:
                # The rows, then the parts and steps, go together (on a cluster, each on
                # its node's connection, in order). The rows are kept by the script that
                # names them, else expire.
                ttl = max(self.window_ms, 3_600_000)
                sets = [(key, blob, ttl) for key, blob in rows]
                replies = in_turn(self.client, self._write, calls, sets)
                conflicts = skus_to_read_again(parts, replies)
        except DigestKeyChanged:
            self.digest_keys.forget()  # the caller reads again, with the shards' keys now
            raise
        if conflicts:
            return conflicts
        for shard, part, step in parts:
            if step == "p" and part.outbox:
                self._step_fields.setdefault(changes.outbox_id, set()).add((shard, part.outbox_id))
        if changes.offsets and self.layout.shards > 1:
            flat = [x for pair in changes.offsets.items() for x in pair]
            self._advance(keys=[self.layout.offsets_key(self.group_id)], args=flat)
        return []

    def _rows_apart(
        self, parts: list[tuple[int, ChangeSet, str]]
    ) -> tuple[list[tuple[int, ChangeSet, str]], list[tuple[str, bytes]]]:
        """The parts with their large staged ledger values replaced by the names of keys
        to SET before them (``ROWS_INLINE_MAX``), and those keys and values."""
        rows: list[tuple[str, bytes]] = []
        out: list[tuple[int, ChangeSet, str]] = []
        for shard, part, step in parts:
            staged = part.ledger.get(shard, {})
            if any(len(blob) > ROWS_INLINE_MAX for blob in staged.values()):
                write_id = write_token(part.outbox_id)
                named: dict[str, bytes] = {}
                for n, (name, blob) in enumerate(staged.items()):
                    if len(blob) > ROWS_INLINE_MAX:
                        key = self.layout.rows_key(shard, write_id, n)
                        rows.append((key, blob))
                        blob = ROWS_REF + key.encode()
                    named[name] = blob
                part = dataclasses.replace(part, ledger={shard: named})  # the caller's is kept
            out.append((shard, part, step))
        return out, rows

    def _with_rows(self, pages: list[dict[bytes, bytes]]) -> list[dict[bytes, bytes]]:
        """Staged hashes' values, those kept under a key of their own read from it."""
        named = [
            (page, name, blob[len(ROWS_REF) :])
            for page in pages
            for name, blob in page.items()
            if blob.startswith(ROWS_REF)
        ]
        if named:
            pipe = self.client.pipeline(transaction=False)
            for _, _, key in named:
                pipe.get(key)
            for (page, name, key), blob in zip(named, pipe.execute(), strict=True):
                if blob is None:  # PERSISTed by the write that staged them: never expected
                    raise LookupError(f"staged ledger rows {name!r}: key {key!r} is missing")
                page[name] = blob
        return pages

    def server_id(self) -> str:
        """The server's run_id, which changes when it restarts or a replica takes over; on a
        cluster, "<node>=<run_id>" of every primary, ";"-separated."""
        if not self.cluster:
            info: dict[str, Any] = self.client.info("server")
            return str(info["run_id"])
        cluster: Any = self.client
        found: dict[str, dict[str, Any]] = cluster.info("server", target_nodes="primaries")
        return ";".join(f"{node}={info['run_id']}" for node, info in sorted(found.items()))

    def _assumed(self, changes: ChangeSet, shard: int) -> ChangeSet:
        """On a cluster, a part names the run_id of the node that holds its shard now (one
        that matches no run_id when the shard moved to a node the write did not assume)."""
        if not self.cluster or not changes.assumed_server:
            return changes
        runs = dict(item.split("=", 1) for item in changes.assumed_server.split(";"))
        cluster: Any = self.client
        node = cluster.get_node_from_key(self.layout.due_key(shard)).name
        # A copy: with one shard the part is the caller's own change set.
        return dataclasses.replace(changes, assumed_server=runs.get(node, "moved"))

    def marker(self) -> str | None:
        """The projection marker, or None when a shard lacks it (lost its data)."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.get(self.layout.marker_key(shard))
        found: list[bytes | None] = pipe.execute()
        if any(value is None for value in found):
            return None
        values = {value.decode() for value in found if value is not None}
        return "rebuilding" if "rebuilding" in values else min(values)

    def set_marker(self, how: str) -> None:
        """Mark every shard (`atp rebuild`: "rebuilding", then "rebuilt")."""
        initialize(self.client, self.layout, how, replace=True)
        self.digest_keys.forget()

    def restore_offsets(self, offsets: Mapping[str, int]) -> None:
        """The group's offsets, and every shard's (it holds every event below them)."""
        names = {self.layout.offsets_key(self.group_id)} | {
            self.layout.shard_offsets_key(shard, self.group_id) for shard in self._shards()
        }
        for name in names:
            self.client.hset(name, mapping=dict(offsets))  # type: ignore[arg-type]

    def mark_initialized(self, how: str) -> None:
        initialize(self.client, self.layout, how)
        self.digest_keys.forget()

    def put_snapshot(self, instance: str, payload: bytes, ttl_s: int = 30) -> None:
        key = keys.consumers_key(self.group_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, instance, payload)
        pipe.expire(key, ttl_s)
        pipe.execute()

    def offsets(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.layout.offsets_key(self.group_id))  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    def due(self, now_ms: int, limit: int) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.zrangebyscore(
                self.layout.due_key(shard), "-inf", now_ms, start=0, num=limit, withscores=True
            )
        found: list[list[tuple[bytes, float]]] = pipe.execute()
        if len(found) == 1:
            return [sku.decode() for sku, _ in found[0]]
        merged = sorted((score, sku) for page in found for sku, score in page)
        return [sku.decode() for _, sku in merged[:limit]]

    def kits(self, skus: Sequence[str]) -> dict[str, KitDefinition]:
        return self.kit_records.of(skus)

    def kits_due(self, limit: int) -> list[KitDue]:
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.zrange(self.layout.kits_due_key(shard), 0, limit - 1, withscores=True)
        found: list[list[tuple[bytes, float]]] = pipe.execute()
        return [
            KitDue(shard, kit.decode(), int(count))
            for shard, page in enumerate(found)
            for kit, count in page
        ]

    def kits_computed(self, entries: Sequence[KitDue]) -> None:
        by_shard: dict[int, list[Any]] = {}
        for entry in entries:
            by_shard.setdefault(entry.shard, []).extend((entry.kit, entry.writes))
        calls = [([self.layout.kits_due_key(s)], args) for s, args in by_shard.items()]
        if calls:
            pipelined(self.client, self._kits_computed, calls)

    def install_kits(self, configured: Sequence[KitDefinition], now_ms: int) -> int:
        return self.kit_records.install(configured, now_ms)

    def capacity_used(self, day: int) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.layout.capacity_key(day))  # type: ignore[assignment]
        return capacity_counts(raw)

    def outbox(self, limit: int) -> dict[str, bytes]:
        """Waiting writes' events: one HSCAN page of about ``limit`` entries per shard (the
        whole outbox while it is small), sorted oldest first."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.hscan(self.layout.outbox_key(shard), 0, count=max(1, limit // self.layout.shards))
        pages: list[tuple[int, dict[bytes, bytes]]] = pipe.execute()
        return _merge_outbox((page for _, page in pages), self._step_fields)

    def documents(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        pipe = self.client.pipeline(transaction=False)
        for channel, sku in pairs:
            pipe.hget(self.layout.sku_key(sku), projection_field(channel))
        found: list[bytes | None] = pipe.execute()
        return {pair: doc for pair, doc in zip(pairs, found, strict=True) if doc is not None}

    def staged_ledger(self) -> dict[str, bytes]:
        """Ledger rows written with their batch, not yet moved to a ledger file: with several
        shards, those of batches that every shard holds."""
        if self.layout.shards == 1:
            raw: dict[bytes, bytes] = self.client.hgetall(self.layout.staged_key(0))  # type: ignore[assignment]
            return {k.decode(): v for k, v in self._with_rows([raw])[0].items()}
        offsets = self.offsets()
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.hgetall(self.layout.staged_key(shard))
        return _merge_staged(self._with_rows(pipe.execute()), offsets)

    def drop_staged_ledger(self, names: Sequence[str]) -> None:
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            pipe = self.client.pipeline(transaction=False)
            for shard in self._shards():
                pipe.hmget(self.layout.staged_key(shard), chunk)
            found: list[list[bytes | None]] = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for shard, values in zip(self._shards(), found, strict=True):
                for blob in values:
                    if blob is not None and blob.startswith(ROWS_REF):
                        pipe.unlink(blob[len(ROWS_REF) :])
                pipe.hdel(self.layout.staged_key(shard), *chunk)
            pipe.execute()

    def ack_outbox(self, outbox_ids: Sequence[str]) -> int:
        """Forget writes whose events the broker acknowledged, every one."""
        if not outbox_ids:
            return 0
        fields: list[list[str]] = [list(outbox_ids) for _ in self._shards()]
        for outbox_id in outbox_ids:
            for shard, name in self._step_fields.pop(outbox_id, ()):
                fields[shard].append(name)
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.hdel(self.layout.outbox_key(shard), *fields[shard])
        return sum(pipe.execute())

    def order_results(self, order_ids: Sequence[str]) -> dict[str, bytes]:
        """The results, as planned now (JSON), of those orders that exist: two round trips
        for any number of orders."""
        if not order_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for order_id in order_ids:
            pipe.get(self.layout.order_key(order_id))
        found: list[bytes | None] = pipe.execute()
        records = {o: stored_order(raw) for o, raw in zip(order_ids, found, strict=True)}
        stored = {o: order for o, order in records.items() if order is not None}
        fields = line_fields(stored.items())
        pipe = self.client.pipeline(transaction=False)
        for sku, names in fields.items():
            pipe.hmget(self.layout.lines_key(sku), names)
        lines = line_records(fields, pipe.execute() if fields else [])
        return {
            o: encode_result(current(order, lines_of(o, order, lines)).result)
            for o, order in stored.items()
        }
