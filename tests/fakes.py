"""Test doubles shared by the suites: Kafka messages, consumer and producer stand-ins, and an
in-memory store that keeps the ``streams.store.Store`` Protocol the way the Redis adapter
and its write script do (versions, dedupe marks, the server id, the projection marker,
offsets that only move forward, the outbox, staged ledger rows, the due set); and the
API's allocator's store (the AsyncRedisStore contract over dicts) and broker send; and, for
the integration tests, the real Redis stores and clients with a fault injected (a write cut
short, a write or claim sent twice, a cancellation lost) and broker sends that acknowledge
at once or die.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aredis
from confluent_kafka import TopicPartition

from allocation.kits import KitDefinition
from atp_service.orders import StoredOrder, current, decode_stored
from atp_service.store import keys, redis_store
from atp_service.store.async_store import AsyncRedisStore
from atp_service.store.redis_store import RedisStore
from atp_service.store.write_plan import PutExists
from streams.backorders import line_field, merge_line_record
from streams.changeset import ChangeSet, encode_outbox
from streams.kafka import Outgoing, ProduceFailed
from streams.ledger import parse_staged_field, staged_field
from streams.state import SkuState, dump_state, load_state
from streams.store import KitDue, ProjectionMissing, ServerReplaced, Snapshot, Store


class StoreDown(ConnectionError):
    """What the in-memory store raises while it is made unreachable."""


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes, key: bytes) -> None:
        self._where = (topic, partition, offset)
        self._value, self._key = value, key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)  # TIMESTAMP_NOT_AVAILABLE


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[list[TopicPartition]] = []
        self.assigned: list[TopicPartition] = []
        self.seeks: list[tuple[str, int, int]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        self.commits.append(offsets)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)

    def assignment(self) -> list[TopicPartition]:
        return self.assigned

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append((partition.topic, partition.partition, partition.offset))

    def get_watermark_offsets(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return (0, 0)


class FakeRawProducer:
    """confluent_kafka.Producer's produce/poll/flush: every message is acknowledged at once."""

    def __init__(self, sent: list[Outgoing]) -> None:
        self.sent = sent
        self._reports: list[tuple[Callable[..., None], Outgoing]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                on_delivery: Callable[..., None] | None = None, **kwargs: Any) -> None:  # fmt: skip
        message = Outgoing(topic, key, value or b"", list(kwargs.get("headers") or []))
        self.sent.append(message)
        if on_delivery is not None:
            self._reports.append((on_delivery, message))

    def poll(self, timeout: float = 0) -> int:
        reports, self._reports = self._reports, []
        for report, _message in reports:
            report(None, None)
        return len(reports)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class FakeProducer:
    """streams.kafka.ReliableProducer: send_all (dead letters) and the raw producer."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self.producer = FakeRawProducer(self.sent)

    def send_all(self, messages: Sequence[Outgoing], timeout_s: float | None = None) -> None:
        self.sent.extend(messages)


class MemoryStore:
    """``streams.store.Store`` in memory, with the write script's rules."""

    transient_errors: tuple[type[Exception], ...] = (StoreDown,)

    def __init__(self, server: str = "memory-1", initialized: str | None = None) -> None:
        self.server = server
        self.initialized = initialized
        self.versions: dict[str, int] = {}
        self.states: dict[str, bytes] = {}
        self.documents_of: dict[str, dict[str, bytes]] = {}  # sku -> projection field -> doc
        self.seen: dict[str, dict[str, int]] = {}  # sku -> event_id -> ms applied
        self.stored_offsets: dict[str, int] = {}
        self.outbox_entries: dict[str, bytes] = {}
        self.staged: dict[str, bytes] = {}
        self.due_ms: dict[str, int] = {}
        self.snapshots: dict[str, bytes] = {}
        self.down = False  # while True every call raises StoreDown
        self.writes = 0
        self.orders: dict[str, bytes] = {}  # order_id -> its current result (JSON)
        self.kit_definitions: dict[str, KitDefinition] = {}
        self.kit_counts: dict[str, int] = {}  # kit -> writes of its components not computed
        self.capacity: dict[int, dict[str, int]] = {}  # day -> location -> units taken

    def _reachable(self) -> None:
        if self.down:
            raise StoreDown("the store is unreachable")

    def read(
        self, skus: Sequence[str], event_ids: Mapping[str, Sequence[str]] | None = None
    ) -> Snapshot:
        self._reachable()
        asked = (event_ids or {}).items()
        wanted = set(skus)  # as the read script: only the skus read are looked up
        seen = {
            event_id
            for sku, ids in asked
            if sku in wanted
            for event_id in ids
            if event_id in self.seen.get(sku, {})
        }
        return Snapshot(
            states={sku: load_state(sku, self.states.get(sku)) for sku in skus},
            versions={sku: self.versions.get(sku, 0) for sku in skus},
            seen=frozenset(seen),
        )

    def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        self._reachable()
        if not changes.skus and not changes.offsets:
            return []
        assert not changes.puts, "the in-memory store keeps no plain keys"
        if self.initialized is None:
            raise ProjectionMissing("no projection marker")
        verify = bool(changes.assumed_server)
        if verify and changes.assumed_server != self.server:
            raise ServerReplaced("another server")
        conflicts: list[str] = []
        for write in changes.skus:
            marks = self.seen.get(write.sku, {})
            if (
                write.expected_version is not None
                and write.expected_version != self.versions.get(write.sku, 0)
            ) or (verify and any(event_id in marks for event_id in write.seen)):
                conflicts.append(write.sku)
        for sku, ids in changes.marked.items():
            if any(event_id not in self.seen.get(sku, {}) for event_id in ids):
                conflicts.append(sku)
        counts = self.capacity.setdefault(changes.capacity_day, {})
        if any(counts.get(loc, 0) + n > limit for loc, (n, limit) in changes.capacity.items()):
            return [write.sku for write in changes.skus]
        if conflicts:
            return conflicts
        self.writes += 1
        for write in changes.skus:
            self.versions[write.sku] = self.versions.get(write.sku, 0) + 1
            self.states[write.sku] = write.state
            self.documents_of.setdefault(write.sku, {}).update(write.fields)
            if write.due_ms is None:
                self.due_ms.pop(write.sku, None)
            else:
                self.due_ms[write.sku] = write.due_ms
            marks = self.seen.setdefault(write.sku, {})
            for event_id in write.seen:
                marks[event_id] = now_ms
        for name, rows in changes.ledger.get(0, {}).items():
            topic, partition, first = parse_staged_field(name)
            stored = self.stored_offsets.get(f"{topic}\x1f{partition}", -1)
            self.staged[staged_field(topic, partition, max(first, stored))] = rows
        for name, offset in changes.offsets.items():
            if offset > self.stored_offsets.get(name, -1):
                self.stored_offsets[name] = offset
        if changes.outbox:
            self.outbox_entries[changes.outbox_id] = encode_outbox(changes.outbox)
        for loc, (n, _) in changes.capacity.items():
            counts[loc] = counts.get(loc, 0) + n
        written = {write.sku for write in changes.skus}
        for kit in self.kit_definitions.values():  # as the script: kits of written components
            for c in kit.components:
                if c.sku in written:
                    self.kit_counts[kit.sku] = self.kit_counts.get(kit.sku, 0) + 1
        return []

    def state(self, sku: str) -> SkuState:
        return load_state(sku, self.states.get(sku))

    def server_id(self) -> str:
        self._reachable()
        return self.server

    def marker(self) -> str | None:
        self._reachable()
        return self.initialized

    def mark_initialized(self, how: str) -> None:
        self._reachable()
        if self.initialized is None:
            self.initialized = how

    def put_snapshot(self, instance: str, payload: bytes, ttl_s: int = 30) -> None:
        self._reachable()
        self.snapshots[instance] = payload

    def offsets(self) -> dict[str, int]:
        self._reachable()
        return dict(self.stored_offsets)

    def due(self, now_ms: int, limit: int) -> list[str]:
        self._reachable()
        return sorted(
            (sku for sku, ms in self.due_ms.items() if ms <= now_ms), key=self.due_ms.__getitem__
        )[:limit]

    def capacity_used(self, day: int) -> dict[str, int]:
        self._reachable()
        return dict(self.capacity.get(day, {}))

    def install_kits(self, configured: Sequence[KitDefinition], now_ms: int) -> int:
        self._reachable()
        for kit in configured:
            self.kit_definitions[kit.sku] = kit
            self.due_ms[kit.sku] = now_ms
        return len(configured)

    def kits_due(self, limit: int) -> list[KitDue]:
        self._reachable()
        return [KitDue(0, kit, count) for kit, count in list(self.kit_counts.items())[:limit]]

    def kits_computed(self, entries: Sequence[KitDue]) -> None:
        self._reachable()
        for entry in entries:
            if self.kit_counts.get(entry.kit) == entry.writes:
                del self.kit_counts[entry.kit]

    def kits(self, skus: Sequence[str]) -> dict[str, KitDefinition]:
        self._reachable()
        return {sku: self.kit_definitions[sku] for sku in skus if sku in self.kit_definitions}

    def outbox(self, limit: int) -> dict[str, bytes]:
        self._reachable()
        return dict(sorted(self.outbox_entries.items())[:limit])

    def order_results(self, order_ids: Sequence[str]) -> dict[str, bytes]:
        return {o: self.orders[o] for o in order_ids if o in self.orders}

    def documents(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        self._reachable()
        out = {}
        for channel, sku in pairs:
            doc = self.documents_of.get(sku, {}).get(f"p:{channel}")
            if doc is not None:
                out[channel, sku] = doc
        return out

    def ack_outbox(self, outbox_ids: Sequence[str]) -> int:
        self._reachable()
        return sum(self.outbox_entries.pop(outbox_id, None) is not None for outbox_id in outbox_ids)

    def staged_ledger(self) -> dict[str, bytes]:
        self._reachable()
        return dict(self.staged)

    def drop_staged_ledger(self, names: Sequence[str]) -> None:
        self._reachable()
        for name in names:
            self.staged.pop(name, None)


# -- the API's allocator (atp_service.allocator) ------------------------------------------


def _sku_of(key: str) -> str:
    """The sku of its hash of lines: '<shard prefix>lines:<sku>' (atp_service/store/keys.py)."""
    (prefix,) = keys.SINGLE.prefixes
    assert key.startswith(prefix + keys.LINES_PART)
    return key[len(prefix + keys.LINES_PART) :]


def memory_store_is_a_store() -> Store:
    """mypy (``make lint``) checks the in-memory store against the consumer's Protocol, so
    the unit tests run the steps on what the Redis adapter also is."""
    return MemoryStore()


class FakeClient:
    """The client calls the allocator makes of its store's client: mget, delete, hdel."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store

    async def mget(self, names: Sequence[str]) -> list[bytes | None]:
        await asyncio.sleep(0)
        return [self.store.strings.get(n) for n in names]

    async def delete(self, *names: str) -> int:
        for name in names:
            self.store.strings.pop(name, None)
        return len(names)

    async def hdel(self, name: str, *fields: str) -> int:
        held = self.store.hashes.get(name, {})
        return sum(held.pop(f, None) is not None for f in fields)


class FakeKits:
    """AsyncKitRecords' look-up over a dict."""

    def __init__(self) -> None:
        self.definitions: dict[str, KitDefinition] = {}

    async def of(self, skus: Sequence[str]) -> dict[str, KitDefinition]:
        return {sku: self.definitions[sku] for sku in skus if sku in self.definitions}


class FakeStore:
    """The AsyncRedisStore contract over dicts: versioned states, 'nx'/'set' puts."""

    def __init__(self, states: dict[str, SkuState]) -> None:
        self.states = {sku: dump_state(s) for sku, s in states.items()}
        self.versions = dict.fromkeys(states, 1)
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}  # 'h:<field>' puts
        self.client = FakeClient(self)
        self.reads = 0
        self.writes = 0
        self.conflict_next = 0  # refuse this many writes as if a sku had moved
        self.window_ms = 7 * 86_400_000
        self.layout = keys.SINGLE
        self.lines: dict[tuple[str, str], bytes] = {}  # (sku, line field) -> line record
        self.before_read: list[Callable[[], None]] = []  # run (once each) on the next reads
        self.kit_records = FakeKits()
        self.capacity: dict[str, int] = {}  # today's units taken per location

    async def capacity_used(self, day: int) -> dict[str, int]:
        return dict(self.capacity)

    async def orders(self, order_ids: Sequence[str]) -> list[StoredOrder | None]:
        found = [self.strings.get(keys.SINGLE.order_key(o)) for o in order_ids]
        return [
            current(
                decode_stored(raw),
                {
                    line.line_id: self.lines.get((line.sku, line_field(oid, line.line_id)))
                    for line in decode_stored(raw).result.lines
                },
            )
            if raw
            else None
            for oid, raw in zip(order_ids, found, strict=True)
        ]

    async def read(self, skus: Sequence[str]) -> Snapshot:
        self.reads += 1
        if self.before_read:
            self.before_read.pop(0)()
        await asyncio.sleep(0)
        return Snapshot(
            {sku: load_state(sku, self.states.get(sku)) for sku in skus},
            {sku: self.versions.get(sku, 0) for sku in skus},
            frozenset(),
        )

    async def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        await asyncio.sleep(0)
        for key, mode, _ in changes.puts:
            if mode == "nx" and key in self.strings:
                raise PutExists(key)
        moved = [w.sku for w in changes.skus if w.expected_version != self.versions.get(w.sku, 0)]
        if self.conflict_next and changes.skus:
            self.conflict_next -= 1
            moved = [changes.skus[0].sku]
        if any(self.capacity.get(loc, 0) + n > cap for loc, (n, cap) in changes.capacity.items()):
            moved = [w.sku for w in changes.skus]
        if moved:
            return moved
        self.writes += 1
        for loc, (n, _) in changes.capacity.items():
            self.capacity[loc] = self.capacity.get(loc, 0) + n
        for w in changes.skus:
            self.states[w.sku] = w.state
            self.versions[w.sku] = self.versions.get(w.sku, 0) + 1
        for key, mode, value in changes.puts:
            if mode == "del":
                self.strings.pop(key, None)
            elif mode == "hdel":
                self.lines.pop((_sku_of(key), value.decode()), None)
            elif mode.startswith("h:"):
                self.hashes.setdefault(key, {})[mode[2:]] = value
            else:
                self.strings[key] = value
        self.merge_lines(changes)
        return []

    def merge_lines(self, changes: ChangeSet) -> None:
        for sku, records in changes.lines.items():
            for name, record in records.items():
                self.lines[(sku, name)] = merge_line_record(self.lines.get((sku, name)), record)

    def open_units(self, sku: str, now_us: int) -> int:
        return sum(r.open_quantity(now_us) for r in load_state(sku, self.states[sku]).reservations)


class FakeBroker:
    """The allocator's send: records each batch, and fails it (ProduceFailed) if told to."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sends: list[list[Outgoing]] = []

    async def send(self, messages: Sequence[Outgoing], timeout_s: float) -> None:
        await asyncio.sleep(0)
        self.sends.append(list(messages))
        if self.fail:
            raise ProduceFailed("down")


class SlowBroker(FakeBroker):
    """Acknowledges after ``delay_s`` (forever with None); ``started`` once a send began."""

    def __init__(self, delay_s: float | None) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.started = asyncio.Event()

    async def send(self, messages: Sequence[Outgoing], timeout_s: float) -> None:
        self.started.set()
        if self.delay_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay_s or 0)
        self.sends.append(list(messages))


# -- real stores and clients with a fault injected (integration tests) --------------------


class CutShort(RedisStore):
    """A store whose next write runs only its first ``cut_after`` scripts (and what it
    sends before them), then the process 'dies' (the connection error a consumer killed
    mid-write leaves)."""

    cut_after: int | None = None

    def write(self, changes: Any, now_ms: int) -> list[str]:
        if self.cut_after is None:
            return super().write(changes, now_ms)
        keep, self.cut_after = self.cut_after, None
        real = self.client.pipeline

        def pipeline(**kwargs: Any) -> Any:
            pipe = real(**kwargs)
            execute = pipe.execute

            def cut(raise_on_error: bool = True) -> Any:
                scripts = [
                    i for i, (args, _) in enumerate(pipe.command_stack) if args[0] == "EVALSHA"
                ]
                del pipe.command_stack[scripts[keep] :]
                execute(raise_on_error=raise_on_error)
                raise redis.ConnectionError("the consumer died between two steps")

            pipe.execute = cut  # type: ignore[method-assign]
            return pipe

        real_in_turn = getattr(redis_store, "in_turn")  # noqa: B009

        def in_turn(client: Any, script: Any, calls: Any, sets: Any = ()) -> Any:
            real_in_turn(client, script, itertools.islice(calls, keep), sets)
            raise redis.ConnectionError("the consumer died between two steps")

        self.client.pipeline = pipeline  # type: ignore[method-assign,assignment]
        setattr(redis_store, "in_turn", in_turn)  # noqa: B010
        try:
            return super().write(changes, now_ms)
        finally:
            del self.client.pipeline
            setattr(redis_store, "in_turn", real_in_turn)  # noqa: B010


def send_into(sent: list[Outgoing]) -> Callable[[Sequence[Outgoing], float], None]:
    """The allocator's send, acknowledging every message at once."""

    def send(messages: Sequence[Outgoing], timeout_s: float) -> None:
        sent.extend(messages)

    return send


class Twice(AsyncRedisStore):
    """Every shard's part written, then sent again: the answer is the second run's."""

    async def write_each(self, changes: ChangeSet, now_ms: int) -> list[str]:
        await super().write_each(changes, now_ms)
        return await super().write_each(changes, now_ms)


class TwiceClient(aredis.Redis):
    """A claim (SET NX) sent again after it landed: the answer is the second one's."""

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        first = await super().set(*args, **kwargs)
        return await super().set(*args, **kwargs) if kwargs.get("nx") else first


class WrittenTwice(AsyncRedisStore):
    """Every write sent again after it landed: the second run finds the order's record."""

    async def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        await super().write(changes, now_ms)
        return await super().write(changes, now_ms)


def send_dies(messages: Sequence[Outgoing], timeout_s: float) -> None:
    """The allocator's send in a process that dies before the broker answers."""
    raise RuntimeError("the process died before the broker answered")


class LosesOneCancel:
    """The real client, but its PUBLISH swallows the first cancellation it receives, as
    Python 3.11's ``wait_for`` can inside redis-py."""

    def __init__(self, client: aredis.Redis) -> None:
        self._client = client
        self.lost = 0
        self.publishing = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def spublish(self, channel: str, message: str) -> int:
        try:
            self.publishing.set()
            await asyncio.sleep(0.2)  # long enough for the stop to land here
            return int(await self._client.spublish(channel, message))
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost += 1
            return 0  # and the task's cancelling() count stays raised, as with wait_for
        finally:
            self.publishing.clear()
