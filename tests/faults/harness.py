"""Shared machinery of the fault-injection tests.

- ``build_stack``: one test's world (own topics, group, ledger) with a short consumer-group
  session timeout, so a consumer killed with SIGKILL is replaced in ~2 s instead of ~12 s.
- ``Feed``: a seeded generator of valid events over ~200 skus covering every rule of the
  contract's section 2 (receipts, moves, status changes, counts and stale counts, stale
  movements, reservations with and without expiry, repeated creations, shipments that
  consume reservations, consumptions that arrive before their reservation, releases,
  inbound upserts, older inbound updates, closed lines, unknown extra fields).
- Oracles: ``projection_differences`` (Redis documents vs ``tests.reference``), the ledger
  summary (DuckDB over the Parquet files) and ``atp verify``.
- ``TcpProxy``: a broker outage without losing the in-memory broker's data.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from kafka.partitioner.default import murmur2  # type: ignore[import-untyped]

from atp_service.config import Settings, parse_config
from atp_service.local.services import create_topics
from atp_service.store import keys
from atp_service.store.marks import DigestKeys, digests
from streams.changeset import projection_field
from streams.ledger import Ledger, view_sql
from tests.conftest import SESSION_TIMEOUT_MS, Stack, config_text
from tests.reference import ReferenceModel

PARTITIONS = 3
FIELDS = ("available_to_sell", "on_hand", "reserved", "safety_stock", "atp")
CHANNEL_LOCATIONS = {"web": ("DC-EAST", "DC-WEST"), "marketplace": ("DC-EAST",)}
LOCATIONS = ("DC-EAST", "DC-WEST", "STORE-9")  # STORE-9 belongs to no channel


# -- the world of one test ----------------------------------------------------------------


def build_stack(
    tmp: Path,
    redis_url: str,
    bootstrap: str,
    redis_options: Mapping[str, object] | None = None,
) -> Stack:
    prefix = f"f{uuid.uuid4().hex[:10]}"
    text = config_text(
        redis_url=redis_url,
        bootstrap=bootstrap,
        prefix=prefix,
        group_id=f"g-{prefix}",
        ledger_dir=str(tmp / "ledger"),
        redis_options=redis_options,
    )
    path = tmp / "atp.toml"
    path.write_text(text)
    settings = parse_config(text)
    assert settings.kafka.session_timeout_ms == SESSION_TIMEOUT_MS
    create_topics(bootstrap, settings.topics.names(), partitions=PARTITIONS)
    return Stack(settings, path, tmp)


def input_topics(settings: Settings) -> list[str]:
    t = settings.topics
    return [t.movements, t.reservations, t.inbound]


def topic_of(settings: Settings, event: dict[str, Any]) -> str:
    t = settings.topics
    kind = event.get("type")
    if kind in ("bin_movement", "bin_count"):
        return t.movements
    if kind in ("reservation_created", "reservation_released"):
        return t.reservations
    return t.inbound


def home_partition(sku: str) -> int:
    """The partition a sku's key hashes to (murmur2, as every producer of ours and the Java
    clients hash it), for tests that produce to explicit partitions. kafka-python's own
    implementation of the hash, so the test does not check our config against itself."""
    return (murmur2(sku.encode()) & 0x7FFFFFFF) % PARTITIONS


def redis_for(stack: Stack) -> redis.Redis:
    if stack.settings.redis.cluster:
        return stack.redis()
    return redis.Redis.from_url(
        stack.settings.redis.url, socket_connect_timeout=2, socket_timeout=10
    )


def stored_offsets(client: redis.Redis, settings: Settings) -> dict[tuple[str, int], int]:
    layout = keys.Layout(settings.redis.shard_count)
    raw: dict[bytes, bytes] = client.hgetall(layout.offsets_key(settings.kafka.group_id))  # type: ignore[assignment]
    out = {}
    for name, value in raw.items():
        topic, partition = name.decode().split("\x1f")
        out[(topic, int(partition))] = int(value)
    return out


def progress(client: redis.Redis, settings: Settings) -> int:
    """How many input messages the projection has consumed (offsets start at 0)."""
    return sum(stored_offsets(client, settings).values())


def merged_ends(*producers: Tracked) -> dict[tuple[str, int], int]:
    """The end offset of every partition the producers wrote to, from their delivery reports.

    (Tansu's ListOffsets answers with the base offset of the last batch, so the reports are
    the reliable source of the high watermarks.)"""
    out: dict[tuple[str, int], int] = {}
    for producer in producers:
        for topic, partition, offset, _ in producer.delivered.values():
            out[(topic, partition)] = max(out.get((topic, partition), 0), offset + 1)
    return out


def wait_consumed(
    client: redis.Redis, stack: Stack, ends: dict[tuple[str, int], int], timeout: float = 90.0
) -> dict[tuple[str, int], int]:
    """Wait until the offsets stored with the projection reach ``ends`` in every partition."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            stored = stored_offsets(client, stack.settings)
            if all(stored.get(tp, 0) >= end for tp, end in ends.items()):
                return stored
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the consumer did not reach the end offsets within {timeout}s: "
                f"stored={stored_offsets(client, stack.settings)} ends={ends}\n{tail(stack.logs())}"
            )
        time.sleep(0.1)


def wait_applying(
    stack: Stack,
    client: redis.Redis,
    consumer: subprocess.Popen[bytes],
    before: int,
    who: str,
    timeout: float = 60,
) -> int:
    """Wait until the consumer has applied more than ``before`` messages; fail at once if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        applied = progress(client, stack.settings)
        if applied > before:
            return applied
        code = consumer.poll()
        if code is not None:
            raise AssertionError(
                f"{who} exited with code {code} instead of consuming:\n{tail(stack.logs())}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{who} applied nothing within {timeout}s:\n{tail(stack.logs())}")
        time.sleep(0.02)


def read_all(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every message of ``topic`` now: assign all partitions from the start, read to the end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        found = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < PARTITIONS:
            assert time.monotonic() < deadline, f"{topic}: not read to the end within {timeout}s"
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                error = message.error()
                if error is None:
                    found.append(message)
                    at_end.discard(message.partition())
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    raise AssertionError(f"reading {topic}: {error}")
        return found
    finally:
        consumer.close()


def partition_ends(
    bootstrap: str, topics: Iterable[str], timeout: float = 30.0
) -> dict[tuple[str, int], int]:
    """The end offset of every non-empty partition, read from the log itself (fetch to EOF)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ends-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
        }
    )
    try:
        wanted = [(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign([TopicPartition(t, p, OFFSET_END) for t, p in wanted])
        ends: dict[tuple[str, int], int] = {}
        at_end: set[tuple[str, int]] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(wanted):
            assert time.monotonic() < deadline, "partition ends not found in time"
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                where = (str(message.topic()), int(message.partition() or 0))
                error = message.error()
                if error is None:
                    ends[where] = max(ends.get(where, 0), int(message.offset() or 0) + 1)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(where)
                    if (message.offset() or 0) > 0:
                        ends[where] = max(ends.get(where, 0), int(message.offset() or 0))
        return ends
    finally:
        consumer.close()


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# -- the oracle ---------------------------------------------------------------------------


def now_us() -> int:
    return time.time_ns() // 1000


def sku_keys(client: redis.Redis) -> set[str]:
    out = set()
    for key in client.scan_iter(match=keys.SKU_PATTERN, count=1000, _type="hash"):
        sku = keys.sku_of(key)
        if sku is not None:
            out.add(sku)
    return out


def documents(
    client: redis.Redis, pairs: list[tuple[str, str]], layout: keys.Layout = keys.SINGLE
) -> dict[tuple[str, str], dict[str, Any] | None]:
    pipe = client.pipeline(transaction=False)
    for channel, sku in pairs:
        pipe.hget(layout.sku_key(sku), projection_field(channel))
    out: dict[tuple[str, str], dict[str, Any] | None] = {}
    for pair, raw in zip(pairs, pipe.execute(), strict=True):
        out[pair] = json.loads(raw) if raw else None
    return out


def projection_differences(
    client: redis.Redis,
    model: ReferenceModel,
    expected: dict[tuple[str, str], dict[str, Any]] | None = None,
    layout: keys.Layout = keys.SINGLE,
) -> list[str]:
    """Every (channel, sku) document in Redis against the reference; [] when equal."""
    in_redis = sku_keys(client)
    extra = sorted(in_redis - set(model.skus))
    want = dict(expected) if expected is not None else model.expected(now_us())
    if extra:
        want.update(model.expected(now_us(), skus=extra))
    have = documents(client, list(want), layout)
    out = []
    for (channel, sku), doc in want.items():
        got = have[(channel, sku)]
        if got is None:
            if sku in model.skus:
                out.append(f"{channel}/{sku}: no document in Redis (reference {doc})")
            continue
        for name in FIELDS:
            if got[name] != doc[name]:
                out.append(f"{channel}/{sku} {name}: redis={got[name]!r} reference={doc[name]!r}")
    return out


def assert_projection(
    client: redis.Redis, model: ReferenceModel, context: str = "", layout: keys.Layout = keys.SINGLE
) -> None:
    differences = projection_differences(client, model, layout=layout)
    assert not differences, (
        f"{len(differences)} difference(s) between Redis and the reference{context}:\n"
        + "\n".join(differences[:30])
    )


def wait_projection(client: redis.Redis, model: ReferenceModel, timeout: float = 60.0) -> None:
    expected = model.expected(now_us())
    deadline = time.monotonic() + timeout
    while True:
        try:
            differences = projection_differences(client, model, expected)
        except redis.RedisError as exc:
            differences = [f"redis: {exc}"]
        if not differences:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"projection != reference after {timeout}s ({len(differences)} differences):\n"
                + "\n".join(differences[:30])
            )
        time.sleep(0.1)


@dataclass
class LedgerSummary:
    rows: int
    by_status: dict[str, int]
    ids: dict[str, list[str]]  # status -> event_ids
    reasons: list[str]


def ledger_summary(settings: Settings) -> LedgerSummary:
    ledger = Ledger(settings.ledger.dir)
    assert ledger.files(), "the ledger is empty"
    connection = duckdb.connect()
    try:
        connection.execute(view_sql(ledger))
        rows = connection.execute("SELECT status, event_id, reason FROM ledger").fetchall()
    finally:
        connection.close()
    by_status: dict[str, int] = {}
    ids: dict[str, list[str]] = {}
    reasons = []
    for status, event_id, reason in rows:
        by_status[status] = by_status.get(status, 0) + 1
        ids.setdefault(status, []).append(event_id)
        if reason:
            reasons.append(reason)
    return LedgerSummary(len(rows), by_status, ids, reasons)


def marks_held(
    client: redis.Redis, skus: Iterable[str], layout: keys.Layout = keys.SINGLE
) -> dict[str, list[str]]:
    """Per sku, the digests its dedupe marks hold (every bucket of the last five),
    sorted."""
    now = time.time_ns() // 1_000_000 // keys.MARKS_BUCKET_MS
    names = list(skus)
    pipe = client.pipeline(transaction=False)
    for sku in names:
        for bucket in range(now - 4, now + 1):
            pipe.smembers(layout.marks_key(sku, bucket))
    found = iter(pipe.execute())
    return {
        sku: sorted(member.decode() for _ in range(5) for member in next(found)) for sku in names
    }


def digests_of(
    client: redis.Redis, ids_by_sku: dict[str, list[str]], layout: keys.Layout = keys.SINGLE
) -> dict[str, list[str]]:
    """Per sku, the digests of its ids with its shard's digest key, sorted."""
    found = DigestKeys(layout).of(client)
    out: dict[str, list[str]] = {}
    for sku, ids in ids_by_sku.items():
        key = found[layout.shard(sku)]
        assert key is not None, f"no digest key for the shard of {sku}"
        out[sku] = sorted(digests(key, ids))
    return out


def atp_cli(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atp_service.cli", *args],
        env=stack.env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def lose_redis_and_rebuild(stack: Stack, consumer: subprocess.Popen[bytes]) -> None:
    """Once ``atp verify`` agrees, stop the consumer, lose every Redis key, `atp rebuild`."""
    deadline = time.monotonic() + 30
    while atp_cli(stack, "verify").returncode != 0:
        assert time.monotonic() < deadline, "atp verify kept finding differences"
        time.sleep(0.5)
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(20) == 0
    redis_for(stack).flushall()  # on a cluster: every primary
    rebuilt = atp_cli(stack, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr


def assert_verify_clean(stack: Stack) -> None:
    result = atp_cli(stack, "verify")
    assert result.returncode == 0, (
        f"atp verify found differences:\n{result.stdout}\n{result.stderr}"
    )


def assert_exactly_once(
    stack: Stack,
    client: redis.Redis,
    model: ReferenceModel,
    duplicates: int = 0,
    ignore_marks: tuple[str, ...] = (),
) -> None:
    """None lost, none applied twice: ledger and dedupe marks hold each applied event once."""
    applied = sorted(model.applied_ids)
    summary = ledger_summary(stack.settings)
    ledgered = summary.ids.get("applied", []) + summary.ids.get("applied_by_api", [])
    assert len(ledgered) == len(set(ledgered)), "an event was applied twice (ledger)"
    assert set(ledgered) == set(applied), (
        f"ledger applied {len(ledgered)} events, reference {len(applied)}; "
        f"missing {sorted(set(applied) - set(ledgered))[:5]}, extra {sorted(set(ledgered) - set(applied))[:5]}"
    )
    assert summary.by_status.get("duplicate", 0) == duplicates, summary.by_status
    held = marks_held(client, model.skus, stack.layout)
    by_sku: dict[str, list[str]] = {sku: [] for sku in model.skus}
    for event_id in applied:
        by_sku[model.sku_of[event_id]].append(event_id)
    wanted = digests_of(client, by_sku, stack.layout)
    for sku in model.skus:
        if ignore_marks:  # the API's own ids, which the model does not know, are held too
            assert set(wanted[sku]) <= set(held[sku]), f"{sku}: an applied event is not marked"
        else:
            assert held[sku] == wanted[sku], (
                f"{sku}: the dedupe marks differ from the applied events"
            )


# -- producing ----------------------------------------------------------------------------


class Tracked:
    """A producer that remembers where each message landed (delivery reports)."""

    def __init__(self, bootstrap: str, **config: Any) -> None:
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
                **config,
            }
        )
        self.delivered: dict[
            int, tuple[str, int, int, float]
        ] = {}  # n -> (topic, partition, offset, when)
        self.failed: dict[int, str] = {}
        self.sent = 0

    def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> int:
        n = self.sent
        self.sent += 1

        def report(err: Any, message: Any) -> None:
            if err is not None:
                self.failed[n] = str(err)
            else:
                self.delivered[n] = (
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    time.time(),
                )

        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": report}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)
        return n

    def event(self, settings: Settings, event: dict[str, Any], partition: int | None = None) -> int:
        return self.send(
            topic_of(settings, event), str(event["sku"]).encode(), encode(event), partition
        )

    def flush(self, timeout: float = 60) -> None:
        assert self.producer.flush(timeout) == 0, "messages still queued after the flush"
        assert not self.failed, f"deliveries failed: {list(self.failed.items())[:5]}"


def encode(event: dict[str, Any]) -> bytes:
    return msgspec.json.encode(event)


class Paced(threading.Thread):
    """Produce events at ``rate`` per second until told to hurry (then all that is left)."""

    def __init__(
        self, producer: Tracked, settings: Settings, events: list[dict[str, Any]], rate: float
    ) -> None:
        super().__init__(daemon=True)
        self.producer = producer
        self.settings = settings
        self.events = events
        self.rate = rate
        self.hurry = threading.Event()
        self.pause = threading.Event()
        self.stop = threading.Event()
        self.produced = 0
        self.error: BaseException | None = None
        self.last_produced_at = 0.0

    def run(self) -> None:
        try:
            started = time.monotonic()
            while self.produced < len(self.events) and not self.stop.is_set():
                target = (
                    len(self.events)
                    if self.hurry.is_set()
                    else int((time.monotonic() - started) * self.rate)
                )
                target = min(target, len(self.events))
                while self.produced < target and not self.pause.is_set():
                    self.producer.event(self.settings, self.events[self.produced])
                    self.produced += 1
                    self.last_produced_at = time.monotonic()
                self.producer.producer.poll(0.01)
        except BaseException as exc:  # reported by the test
            self.error = exc


# -- the seeded event generator ------------------------------------------------------------


def iso(us: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Feed:
    """Valid events, deterministic for a seed (timestamps from a logical clock in the past)."""

    seed: int
    n_skus: int = 200
    prefix: str = "F"
    rng: random.Random = field(init=False)
    skus: list[str] = field(init=False)
    count: int = field(init=False, default=0)
    clock: int = field(init=False)
    today: Any = field(init=False)
    bins: dict[tuple[str, str, str], int] = field(init=False, default_factory=dict)
    open: list[tuple[str, str, str, int]] = field(init=False, default_factory=list)
    owed: list[tuple[str, str, str, str]] = field(init=False, default_factory=list)
    created: list[tuple[str, str]] = field(init=False, default_factory=list)
    inbound: dict[tuple[str, str], int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.skus = [f"{self.prefix}-{i:03d}" for i in range(self.n_skus)]
        self.clock = now_us() - 2 * 3_600_000_000
        self.today = datetime.now(UTC).date()

    def take(self, n: int) -> list[dict[str, Any]]:
        return [self.next() for _ in range(n)]

    def _base(self, kind: str, sku: str, at: int | None = None) -> dict[str, Any]:
        self.count += 1
        self.clock += 1000
        event = {
            "type": kind,
            "event_id": f"{self.prefix}{self.seed}-{self.count}",
            "occurred_at": iso(at or self.clock),
            "sku": sku,
        }
        if self.rng.random() < 0.03:
            event["x_future_field"] = {"ignored": True}  # forward compatibility
        return event

    def _movement(self, sku: str, location: str, quantity: int, src: tuple[str, str] | None,
                  dst: tuple[str, str] | None, reservation_id: str | None = None, at: int | None = None) -> dict[str, Any]:  # fmt: skip
        event = self._base("bin_movement", sku, at)
        event.update(
            location=location, quantity=quantity,
            from_bin=src[0] if src else None, from_status=src[1] if src else None,
            to_bin=dst[0] if dst else None, to_status=dst[1] if dst else None,
            reservation_id=reservation_id,
        )  # fmt: skip
        return event

    def _bin(self) -> str:
        return f"B-{self.rng.randint(1, 4)}"

    def _stocked(self, sku: str | None = None) -> tuple[str, str, str] | None:
        if not self.bins:
            return None
        for _ in range(6):
            key = (
                self.rng.choice(list(self.bins))
                if sku is None
                else (sku, self.rng.choice(LOCATIONS), self._bin())
            )
            if self.bins.get(key, 0) > 0:
                return key
        return None

    def next(self) -> dict[str, Any]:
        r = self.rng.random()
        sku = self.rng.choice(self.skus)
        if r < 0.24 or not self.bins:  # receipt (sometimes into a non-sellable status)
            location, bin_ = self.rng.choice(LOCATIONS), self._bin()
            quantity = self.rng.randint(1, 40)
            status = "available" if self.rng.random() < 0.93 else "qc_hold"
            if status == "available":
                self.bins[(sku, location, bin_)] = (
                    self.bins.get((sku, location, bin_), 0) + quantity
                )
            return self._movement(sku, location, quantity, None, (bin_, status))
        if r < 0.42:  # reservation
            channel = self.rng.choice(list(CHANNEL_LOCATIONS))
            location = (
                self.rng.choice(CHANNEL_LOCATIONS[channel])
                if self.rng.random() < 0.92
                else "STORE-9"
            )
            if (
                self.owed and self.rng.random() < 0.25
            ):  # the reservation a shipment already consumed
                rid, sku, channel, location = self.owed.pop(0)
            else:
                rid = f"R{self.seed}-{self.count}"
            if self.created and self.rng.random() < 0.03:  # a second creation is ignored
                sku, rid = self.rng.choice(self.created)
            quantity = self.rng.randint(1, 5)
            expiry = self.rng.random()
            expires_at = None
            if expiry < 0.07:
                expires_at = iso(now_us() + 3 * 86_400_000_000)
            elif expiry < 0.12:
                expires_at = iso(self.clock - 60_000_000)  # already expired
            event = self._base("reservation_created", sku)
            event.update(
                reservation_id=rid,
                channel=channel,
                location=location,
                quantity=quantity,
                expires_at=expires_at,
            )
            self.created.append((sku, rid))
            if expires_at is None:
                self.open.append((sku, rid, location, quantity))
            return event
        if r < 0.56:  # shipment consuming a reservation (or one not created yet)
            if self.open and self.rng.random() < 0.85:
                sku, rid, location, quantity = self.open.pop(self.rng.randrange(len(self.open)))
                quantity = max(1, quantity - self.rng.randint(0, 1))
            else:
                channel = self.rng.choice(list(CHANNEL_LOCATIONS))
                location = self.rng.choice(CHANNEL_LOCATIONS[channel])
                rid, quantity = f"LATE{self.seed}-{self.count}", self.rng.randint(1, 3)
                self.owed.append((rid, sku, channel, location))
            bin_ = self._bin()
            self.bins[(sku, location, bin_)] = self.bins.get((sku, location, bin_), 0) - quantity
            return self._movement(sku, location, quantity, (bin_, "available"), None, rid)
        if r < 0.61:  # release
            if self.open:
                sku, rid, _, _ = self.open.pop(self.rng.randrange(len(self.open)))
            else:
                rid = f"NEVER{self.seed}-{self.count}"
            event = self._base("reservation_released", sku)
            event["reservation_id"] = rid
            return event
        if r < 0.69:  # damage (status change) or an internal move
            found = self._stocked()
            if found is None:
                return self.next()
            sku, location, bin_ = found
            self.bins[found] -= 1
            if self.rng.random() < 0.5:
                return self._movement(sku, location, 1, (bin_, "available"), (bin_, "damaged"))
            other = self._bin()
            self.bins[(sku, location, other)] = self.bins.get((sku, location, other), 0) + 1
            return self._movement(sku, location, 1, (bin_, "available"), (other, "available"))
        if r < 0.78:  # cycle count (now and then an old one, or a stale movement after it)
            location, bin_ = self.rng.choice(LOCATIONS[:2]), self._bin()
            quantity = self.rng.randint(0, 30)
            if self.rng.random() < 0.1:
                event = self._base("bin_count", sku, at=self.clock - 600_000_000)
            elif self.rng.random() < 0.1:
                return self._movement(
                    sku, location, 2, None, (bin_, "available"), at=self.clock - 900_000_000
                )
            else:
                event = self._base("bin_count", sku)
                self.bins[(sku, location, bin_)] = quantity
            event.update(location=location, bin=bin_, status="available", quantity=quantity)
            return event
        # inbound upsert: new line, update, close, or an older update arriving late
        known = [k for k in self.inbound if k[0] == sku]
        if known and self.rng.random() < 0.5:
            _, inbound_id = self.rng.choice(known)
        else:
            inbound_id = f"PO-{self.rng.randint(1, 9999)}:{self.rng.randint(1, 3)}"
        at = None if self.rng.random() < 0.9 else self.clock - 1_800_000_000
        quantity = 0 if self.rng.random() < 0.1 else self.rng.randint(1, 100)
        event = self._base("inbound", sku, at)
        event.update(
            inbound_id=inbound_id, location=self.rng.choice(LOCATIONS), quantity=quantity,
            eta=(self.today + timedelta(days=self.rng.randint(-2, 20))).isoformat(),
        )  # fmt: skip
        self.inbound[(sku, inbound_id)] = quantity
        return event


def reference(settings: Settings, events: Iterable[dict[str, Any]]) -> ReferenceModel:
    model = ReferenceModel(settings)
    for event in events:
        model.apply(event)
    return model


# -- a TCP proxy: the broker's "outage" -----------------------------------------------------


class TcpProxy:
    """Forward 127.0.0.1:port to 127.0.0.1:target. ``outage()`` closes the listening socket and
    every open connection (clients see the broker vanish); ``resume()`` listens again."""

    def __init__(self, target_port: int, port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = port
        self.accepted = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.05)
        self._listener = listener
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._accept, args=(listener, self._stop), daemon=True
        )
        self._thread.start()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if stop.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _close(self, *sockets: socket.socket) -> None:
        for s in sockets:
            with self._lock:
                self._sockets.discard(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def outage(self) -> int:
        """Stop listening and cut every connection; returns how many connections were cut."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            open_ = list(self._sockets)
        self._close(*open_)
        self.dropped += len(open_) // 2
        return len(open_) // 2

    def resume(self) -> None:
        self.start()

    def close(self) -> None:
        self.outage()


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def wait_for(check: Callable[[], bool], timeout: float, what: str, pause: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s")
        time.sleep(pause)
