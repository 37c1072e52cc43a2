"""Memory benchmark: Redis bytes per sku, per (sku, location), per (channel, sku) and per
dedupe mark on today's key layout, what cheaper dedupe marks would cost, and the sizes of
a deployment of 100k, 1M and 10M skus (issue 17, "Memory at scale"; docs/performance.md).

Part 1, the product as it is. Redis is loaded through the consumer's own fold and write
path (``StreamProjector.apply``, no broker): per sku, stock in one bin at each of L
locations, one open reservation, one inbound line, and more receipts into the first bin up
to E events (so the state's list of recent events is full). Then the parts are deleted one
at a time, and ``INFO memory`` used_memory, summed over the store's primaries, is read
before and after each (the main key table's buckets, ``MEMORY STATS``, are told apart):

- each shard's own keys (due set, outbox, staged ledger rows, offsets, changes streams,
  marker), by kind, per entry;
- the projection: every ``p:<channel>`` field of the sku hashes, per (channel, sku);
- the dedupe marks: every ``e:<sku>`` sorted set, per event_id;
- the raw state: what is left of the sku hashes (version and state), per sku.

Loads: the benchmarks' network (5 channels, 8 locations) at two sizes (linear growth), with
16 shards on one Redis and on a 3-primary Redis Cluster (the shard count's effect); a
network of 20 channels over 50 locations with L = 50 and L = 10 (per (sku, location) is the
difference); 200 events per sku (marks past the listpack limit); and a trickle of 10 events
per write, interleaved over skus, for the changes streams' cost per change as a steady
consumer writes them.

Part 2, dedupe marks, as they are and as they could be (nothing here changes the product).
Written directly under the product's key names, k ids per sku (k from 12 to 120,960):
today's sorted set (event_id strings as the real path's, 13-16 characters, and 36-character
UUIDs; score = ms); an 8-byte BLAKE2b digest of the event_id as the member (score ms, or s);
a per-sku string of 12-byte records (digest and s, APPENDed); and per-sku sets of the digest
as a signed 64-bit integer (Redis keeps those in an intset: 8 bytes each, binary search), one
set per time bucket, expiring a window after its bucket ends (8 buckets of a day, or 3 of
half a window). Each with Redis' default encoding limits (``zset-max-listpack-entries`` 128,
``set-max-intset-entries`` 512) and raised (2048, 4096) where that changes the encoding.
Bytes per id from used_memory deltas, MEMORY USAGE beside them, today's checked against the
real path's at k = 12, 52 and 200; and the time of a lookup of an absent id (a new event's
case), one id a call, in a Lua loop.

Part 3, the sizes of 100k, 1M and 10M skus at 200, 2,000 and 20,000 events/s: from the
figures above (20 channels, 50 locations per sku, the 7-day window, the changes streams'
26 hours), marks today and in each other representation, ids spread evenly and 80% of them
on 20% of the skus; totals and primaries (at most 25 GB each) today and with the
recommended representation.

``python -m benchmarks.memory --size small|full [--runs N]`` (N: repetitions of the lookup
timings; the memory figures are deterministic to a byte or two per item).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import statistics
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from atp_service.config import Settings
from atp_service.local.config_file import ApiKey, Channel, ConfigFile
from atp_service.store import keys
from benchmarks.common import (
    API_KEY,
    CHANNELS,
    LOCATIONS,
    Bench,
    Figure,
    Report,
    Store,
    bench_config,
    direct_projector,
    fmt,
    parse_args,
    say,
    stop_on_sigterm,
    timed,
)
from benchmarks.workload import sku_name
from streams.changeset import decode_outbox, projection_field
from streams.events import AnyEvent, BinMovement, Inbound, ReservationCreated

# The sorted-set layout of the marks before atp:v3, still measured beside today's: one set
# a sku, trimmed on 1 write in 16.
TRIM_EVERY = 16


def zset_marks_key(sku: str) -> str:
    return f"{keys.SINGLE.prefixes[0]}e:{sku}"


SKUS_PER_WRITE = 1000  # bulk loads: a batch of 1000 skus' events per apply()
TRICKLE_EVENTS_PER_WRITE = 10  # about a batch at 2,000 events/s and batch_timeout_ms 5
SAMPLE = 300
WINDOW_S = 7 * 86_400  # consumer.dedupe_window_days, default 7 (atp_service/config.py)
CHANGES_S = keys.CHANGES_RETENTION_MS // 1000
LISTPACK_DEFAULT = 128  # Redis' zset-max-listpack-entries
LISTPACK_RAISED = 2048
GB = 1e9
TRANSIENT = ("outbox", "changes", "staged")  # drained, or kept for a time, not per sku
RECOMMENDED = "half-window sets, intset 4096"  # the sizes' second total
# (skus, events/s) of the sizes: the sizes at 200, 2,000 and 20,000 events/s
SCENARIOS = tuple((skus, rate) for skus in (100_000, 1_000_000, 10_000_000)
                  for rate in (200, 2_000, 20_000))  # fmt: skip

# The large network: 20 channels, each selling from 25 of 50 locations.
LARGE_LOCATIONS = tuple(f"L{i:02d}" for i in range(1, 51))
LARGE_CHANNELS = tuple(
    Channel(f"ch-{c:02d}", c, tuple(LARGE_LOCATIONS[(c * 5 + j) % 50] for j in range(25)),
            c % 3, (0, 7, 14, 21)[c % 4])
    for c in range(1, 21)
)  # fmt: skip


@dataclass(frozen=True)
class Load:
    name: str
    network: str  # "bench" (5 channels, 8 locations) or "large" (20 channels, 50 locations)
    skus: int
    locations: int  # per sku
    events: int  # per sku
    store: str = "single"  # a Store spec: single, single/16, cluster
    trickle: bool = False  # interleaved over skus, TRICKLE_EVENTS_PER_WRITE events a write


def loads(size: str) -> dict[str, Load]:
    f = 1 if size == "small" else 5
    return {
        load.name: load
        for load in (
            Load("bench", "bench", 40_000 * f, 8, 12),
            Load("bench-smaller", "bench", 8_000 * f, 8, 12),
            Load("bench-16-shards", "bench", 8_000 * f, 8, 12, "single/16"),
            Load("bench-cluster", "bench", 8_000 * f, 8, 12, "cluster"),
            Load("large-50", "large", 4_000 * f, 50, 52),
            Load("large-10", "large", 4_000 * f, 10, 52),
            Load("bench-200-events", "bench", 1_000 * f, 8, 200),
            Load("large-trickle", "large", 400 * f, 50, 52, trickle=True),
            Load("large-trickle-16-shards", "large", 400 * f, 50, 52, "single/16", trickle=True),
        )
    }


# -- part 1: the product's own write path ---------------------------------------------


def network(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Locations and channel names of a network."""
    if name == "large":
        return LARGE_LOCATIONS, tuple(c.name for c in LARGE_CHANNELS)
    return LOCATIONS, tuple(c[0] for c in CHANNELS)


def config_text(name: str, store: Store, tmp: Any) -> str:
    if name == "bench":
        return bench_config(store.url, ledger_dir=tmp / "ledger", redis_table=store.redis_table)
    return ConfigFile(
        redis_url=store.url, bootstrap="127.0.0.1:1", ledger_dir=str((tmp / "ledger").resolve()),
        channels=list(LARGE_CHANNELS), api_keys=[ApiKey("bench", API_KEY)],
        group_id="atp-bench", topic_prefix="bench", redis=store.redis_table,
    ).text()  # fmt: skip


def sku_events(
    index: int, sku: str, locations: Sequence[str], channel: str, n_events: int, now: datetime
) -> list[AnyEvent]:
    """Stock in one bin at each of ``locations``, one reservation at the first, one inbound
    line at the second, then receipts into the first bin up to ``n_events``."""

    def receipt(k: int, location: str, prefix: str = "m") -> BinMovement:
        return BinMovement(event_id=f"{prefix}-{index:09d}-{k}", occurred_at=now, sku=sku,
                           location=location, quantity=20 + (index + k) % 50,
                           to_bin="A-01-01", to_status="available")  # fmt: skip

    out: list[AnyEvent] = [receipt(k, location) for k, location in enumerate(locations)]
    k = len(out)
    out.append(ReservationCreated(event_id=f"r-{index:09d}-{k}", occurred_at=now, sku=sku,
                                  reservation_id=f"ORD-{index:09d}:1", channel=channel,
                                  location=locations[0], quantity=2))  # fmt: skip
    out.append(Inbound(event_id=f"i-{index:09d}-{k + 1}", occurred_at=now, sku=sku,
                       inbound_id=f"PO-{index:09d}:1", location=locations[1 % len(locations)],
                       quantity=40, eta=(now + timedelta(days=5)).date()))  # fmt: skip
    out += [receipt(j, locations[0], "f") for j in range(len(out), n_events)]
    return out


def apply_load(projector: Any, load: Load) -> float:
    """Fold the load's events through the consumer's apply(); seconds."""
    locations, channels = network(load.network)
    now = datetime.now(UTC)

    def events_of(i: int) -> list[AnyEvent]:
        first = (i * 7) % len(locations)
        where = [locations[(first + j) % len(locations)] for j in range(load.locations)]
        return sku_events(i, sku_name(i + 1), where, channels[1], load.events, now)

    started = time.perf_counter()
    if load.trickle:
        per_sku = [events_of(i) for i in range(load.skus)]
        stream = [per_sku[i][k] for k in range(load.events) for i in range(load.skus)]
        for at in range(0, len(stream), TRICKLE_EVENTS_PER_WRITE):
            projector.apply(stream[at : at + TRICKLE_EVENTS_PER_WRITE], {})
        return time.perf_counter() - started
    for start in range(0, load.skus, SKUS_PER_WRITE):
        batch: list[AnyEvent] = []
        for i in range(start, min(load.skus, start + SKUS_PER_WRITE)):
            batch += events_of(i)
        projector.apply(batch, {})
    return time.perf_counter() - started


NOT_DATA = ("mem_clients_normal", "mem_clients_slaves", "used_memory_scripts", "mem_cluster_links")


def used(nodes: Sequence[redis.Redis], settle: float = 0.0) -> int:
    """used_memory summed over ``nodes``, less what is not data (client buffers, which the
    write script's large arguments leave behind, cached scripts, cluster links)."""
    if settle:
        time.sleep(settle)  # lets serverCron shrink (and free) emptied key tables
        steady(nodes)
    total = 0
    for node in nodes:
        memory: dict[str, Any] = node.info("memory")
        total += int(memory["used_memory"]) - sum(int(memory.get(x, 0)) for x in NOT_DATA)
    return total


def steady(nodes: Sequence[redis.Redis], timeout: float = 30.0) -> None:
    """Wait until the key tables stop changing: a rehash in progress counts both tables."""
    last, deadline = key_table(nodes), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = key_table(nodes)
        if now == last:
            return
        last = now


def key_table(nodes: Sequence[redis.Redis]) -> int:
    """Bytes of the main key tables: entries and buckets (MEMORY STATS
    overhead.hashtable.main)."""
    total = 0
    for node in nodes:
        stats: dict[str, Any] = node.memory_stats()
        db = stats.get("db.0") or {}
        total += int(db.get("overhead.hashtable.main", 0))
    return total


def entries(node: redis.Redis, key: str) -> int:
    """Items in a shard's key: for a changes stream the (channel, sku) changes its entries
    name (one entry per write, skus newline-separated), for the outbox its events."""
    kind = bytes(node.type(key)).decode()  # type: ignore[arg-type]
    if key.endswith("}:outbox"):
        blobs: list[bytes] = node.hvals(key)  # type: ignore[assignment]
        return sum(len(decode_outbox(blob)) for blob in blobs)
    if kind == "stream":
        items, start = 0, "-"
        while True:
            page: list[Any] = node.xrange(key, min=start, count=1000)  # type: ignore[assignment]
            for _, fields in page:
                items += sum(bytes(v).count(b"\n") + 1 for v in fields.values())
            if len(page) < 1000:
                return items
            start = "(" + page[-1][0].decode()
    counter = {"zset": node.zcard, "hash": node.hlen, "set": node.scard}
    return int(counter[kind](key)) if kind in counter else 1


def kind_of(key: str) -> str:
    """A shard key's kind: its name without the prefix and shard tag ("changes", "due")."""
    rest = key.removeprefix(keys.PREFIX + ":")
    if rest.startswith("{"):
        rest = rest[rest.index("}") + 2 :]
    return rest.split(":")[0]


def _pipelined(
    node: redis.Redis, items: Sequence[str], call: Callable[[Any, str], Any]
) -> list[Any]:
    out: list[Any] = []
    for at in range(0, len(items), 5000):
        pipe = node.pipeline(transaction=False)
        for item in items[at : at + 5000]:
            call(pipe, item)
        out += pipe.execute()
    return out


def measure(nodes: Sequence[redis.Redis], channels: Sequence[str], skus: int) -> dict[str, Any]:
    """Delete the loaded parts one at a time; bytes and counts of each."""
    per_node: list[dict[str, list[str]]] = []
    for node in nodes:
        found = [k.decode() for k in node.scan_iter(match=f"{keys.PREFIX}:*", count=10_000)]
        per_node.append({
            "sku": [k for k in found if "}" + keys.SKU_PART in k],
            "marks": [k for k in found if "}:e:" in k],
            "shard": [k for k in found if "}" + keys.SKU_PART not in k and "}:e:" not in k],
        })  # fmt: skip
    out: dict[str, Any] = {"skus": skus, "loaded": used(nodes, 0.5), "keys": 0}
    out["keys"] = sum(int(node.dbsize()) for node in nodes)
    out["key_table"] = key_table(nodes)
    # Samples, before anything is deleted.
    first = nodes[0]
    sample = random.Random(skus).sample(per_node[0]["sku"], min(SAMPLE, len(per_node[0]["sku"])))
    fields = [projection_field(c) for c in channels]
    usage = _pipelined(first, sample, lambda p, k: p.memory_usage(k, samples=0))
    state = _pipelined(first, sample, lambda p, k: p.hstrlen(k, keys.STATE_FIELD))
    docs = _pipelined(first, sample, lambda p, k: p.hstrlen(k, fields[0]))
    hlen = _pipelined(first, sample, lambda p, k: p.hlen(k))
    bucket = time.time_ns() // 1_000_000 // keys.MARKS_BUCKET_MS
    marks_sample = [keys.SINGLE.marks_key(keys.sku_of(k) or "", bucket) for k in sample]
    m_usage = _pipelined(first, marks_sample, lambda p, k: p.memory_usage(k, samples=0))
    m_card = _pipelined(first, marks_sample, lambda p, k: p.scard(k))
    encodings = _pipelined(first, marks_sample, lambda p, k: p.object("encoding", k))
    out["sample"] = {
        "memory_usage_sku_hash": statistics.mean(usage),
        "state_bytes": statistics.mean(state),
        "document_bytes": statistics.mean(docs),
        "fields_per_sku_hash": statistics.mean(hlen),
        "memory_usage_marks_per_id": statistics.mean(u / c for u, c in zip(m_usage, m_card, strict=True)),
        "marks_encoding": sorted({bytes(e).decode() for e in encodings}),
    }  # fmt: skip
    # Each shard's own keys, one at a time.
    shard: dict[str, dict[str, float]] = {}
    for node, names in zip(nodes, per_node, strict=True):
        for key in sorted(names["shard"]):
            n = entries(node, key)
            before = int(node.info("memory")["used_memory"])
            node.delete(key)
            freed = before - int(node.info("memory")["used_memory"])
            row = shard.setdefault(kind_of(key), {"keys": 0, "entries": 0, "bytes": 0})
            row["keys"] += 1
            row["entries"] += n
            row["bytes"] += freed
    out["shard_keys"] = shard
    # Projection documents.
    before = used(nodes)
    for node, names in zip(nodes, per_node, strict=True):
        _pipelined(node, names["sku"], lambda p, k: p.hdel(k, *fields))
    out["projection_bytes"] = before - used(nodes, 0.5)
    out["documents"] = skus * len(channels)
    # Dedupe marks.
    before = used(nodes)
    marks = 0
    for node, names in zip(nodes, per_node, strict=True):
        marks += sum(_pipelined(node, names["marks"], lambda p, k: p.zcard(k)))
        _pipelined(node, names["marks"], lambda p, k: p.delete(k))
    out["marks"] = marks
    out["marks_keys"] = sum(len(names["marks"]) for names in per_node)
    out["marks_bytes"] = before - used(nodes, 0.5)
    # A key's entry in the key table, from the marks' keys (half the keys: no shrink yet).
    out["key_entry"] = (out["key_table"] - key_table(nodes)) / max(1, out["marks_keys"])
    # The raw state. Emptied, the key tables shrink and free their buckets: told apart.
    before, table_before = used(nodes), key_table(nodes)
    sku_keys = sum(len(names["sku"]) for names in per_node)
    for node, names in zip(nodes, per_node, strict=True):
        _pipelined(node, names["sku"], lambda p, k: p.delete(k))
    freed = before - used(nodes, 1.5)
    buckets = table_before - key_table(nodes) - sku_keys * out["key_entry"]
    out["state_bytes"] = freed - buckets
    out["key_buckets"] = out["key_table"] - out["keys"] * out["key_entry"]
    out["left"] = used(nodes)
    out["keys_left"] = sum(int(node.dbsize()) for node in nodes)
    return out


def run_load(bench: Bench, stores: dict[str, Store], load: Load) -> dict[str, Any]:
    if load.store not in stores:
        stores[load.store] = bench.start_store(load.store)
    store = stores[load.store]
    store.flush()
    nodes = store.nodes()
    settings: Settings = bench.write_config(config_text(load.network, store, bench.tmp))
    channels = [c.name for c in settings.channels]
    empty = used(nodes, 0.5)
    projector = direct_projector(settings)
    events = load.skus * load.events
    how = f"{TRICKLE_EVENTS_PER_WRITE} a write" if load.trickle else "1000 skus a write"
    with timed(f"{load.name}: {load.skus:,} skus, {events:,} events ({how}) on {store.label}"):
        seconds = apply_load(projector, load)
    projector.__dict__.clear()
    result = measure(nodes, channels, load.skus)
    result.update(empty=empty, events=events, events_per_s=events / seconds,
                  channels=len(channels), locations=load.locations, shards=settings.redis.shard_count,
                  store=store.label)  # fmt: skip
    for node in nodes:
        node.close()
    say(f"    {(result['loaded'] - empty) / load.skus:,.0f} bytes per sku in all; "
        f"{result['marks_bytes'] / max(1, result['marks']):.1f} per mark")  # fmt: skip
    return result


# -- part 2: dedupe mark representations ----------------------------------------------


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: str  # "zset", "blob" (a string of records per sku) or "sets" (a set per sku and bucket)
    member: str  # "id" (ids as the real path's), "uuid", "digest" (8 bytes of BLAKE2b)
    score: str = "ms"  # zset scores: "ms" (today's) or "s"
    setting: str = "zset-max-listpack-entries"  # the Redis setting that decides the encoding
    limit: int = LISTPACK_DEFAULT  # its value
    buckets: int = 1  # "sets": keys per sku, each of (window / (buckets - 1)) of time

    @property
    def retention(self) -> float:
        """Retained ids per id of the window: a set expires a window after its bucket ends,
        so ids are kept a window and on average half a bucket more."""
        return 1 + 0.5 / (self.buckets - 1) if self.kind == "sets" else 1.0

    @property
    def default(self) -> bool:
        return self.limit == DEFAULTS[self.setting]

    def relevant(self, k: int) -> bool:
        """Worth measuring at k ids per sku (a raised limit only where it changes anything)."""
        if self.default:
            return True
        default, per_key = DEFAULTS[self.setting], k / self.buckets
        return default < per_key <= self.limit


DEFAULTS = {"zset-max-listpack-entries": LISTPACK_DEFAULT, "set-max-intset-entries": 512}
TODAY = Candidate("today: event_id, ms", "zset", "id")
TODAY_UUID = Candidate("today: UUID event_id, ms", "zset", "uuid")
DIGEST_MS = Candidate("8-byte digest, ms", "zset", "digest")
DIGEST_S = Candidate("8-byte digest, s", "zset", "digest", "s")
BLOB = Candidate("blob: digest + s (12 B)", "blob", "digest", "s")
INTSET = "set-max-intset-entries"
DAYS = Candidate("day sets (8 x 1 day): int64 digest", "sets", "digest", setting=INTSET, limit=512,
                 buckets=8)  # fmt: skip
DAYS_RAISED = Candidate("day sets (8 x 1 day): int64 digest, intset 4096", "sets", "digest",
                        setting=INTSET, limit=4096, buckets=8)  # fmt: skip
HALVES = Candidate("half-window sets (3 x 3.5 days): int64 digest", "sets", "digest",
                   setting=INTSET, limit=512, buckets=3)  # fmt: skip
HALVES_RAISED = Candidate("half-window sets (3 x 3.5 days): int64 digest, intset 4096", "sets",
                          "digest", setting=INTSET, limit=4096, buckets=3)  # fmt: skip
TODAY_LP = Candidate("today: event_id, ms, listpack 2048", "zset", "id", limit=LISTPACK_RAISED)
UUID_LP = Candidate(
    "today: UUID event_id, ms, listpack 2048", "zset", "uuid", limit=LISTPACK_RAISED
)
DIGEST_S_LP = Candidate(
    "8-byte digest, s, listpack 2048", "zset", "digest", "s", limit=LISTPACK_RAISED
)
CANDIDATES = (TODAY, TODAY_UUID, DIGEST_MS, DIGEST_S, BLOB, DAYS, DAYS_RAISED, HALVES,
              HALVES_RAISED, TODAY_LP, UUID_LP, DIGEST_S_LP)  # fmt: skip
K_GRID = (12, 52, 121, 200, 500, 1210, 12096, 120960)


def digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def as_int64(raw: bytes) -> bytes:
    """A digest as a set member Redis keeps in an intset: a signed 64-bit decimal."""
    return str(int.from_bytes(raw, "big", signed=True)).encode()


def ids_of(candidate: Candidate, index: int, k: int, rng: random.Random) -> list[str]:
    if candidate.member == "uuid":
        return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(k)]
    return [f"m-{index:09d}-{j}" for j in range(k)]


def bucket_keys(candidate: Candidate, sku: str, now_s: int) -> list[str]:
    """A sku's sets, newest first: bucket b holds the ids applied in it."""
    size = WINDOW_S // (candidate.buckets - 1)
    return [f"{zset_marks_key(sku)}:{now_s // size - b}" for b in range(candidate.buckets)]


def write_marks(client: redis.Redis, candidate: Candidate, k: int, n_keys: int) -> None:
    """k ids for each of n_keys skus, as the candidate keeps them."""
    rng = random.Random(k)
    now_ms = int(time.time() * 1000)
    step = max(1, 20_000 // k)
    for start in range(0, n_keys, step):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n_keys, start + step)):
            sku = sku_name(i + 1)
            key = zset_marks_key(sku)
            ids = ids_of(candidate, i, k, rng)
            members = (
                [digest(e) for e in ids]
                if candidate.member == "digest"
                else [e.encode() for e in ids]
            )
            if candidate.kind == "blob":  # APPEND, a write per id
                for j, member in enumerate(members):
                    pipe.append(key, member + struct.pack(">I", now_ms // 1000 + j))
            elif candidate.kind == "sets":  # spread over the buckets; each expires
                names = bucket_keys(candidate, sku, now_ms // 1000)
                for b, name in enumerate(names):
                    mine = [as_int64(m) for m in members[b :: candidate.buckets]]
                    if mine:
                        pipe.sadd(name, *mine)
                        pipe.expire(name, 2 * WINDOW_S)
            else:
                for at in range(0, k, 1000):
                    chunk = members[at : at + 1000]
                    scores = [
                        now_ms + at + j if candidate.score == "ms" else now_ms // 1000 + at + j
                        for j in range(len(chunk))
                    ]
                    pipe.zadd(key, dict(zip(chunk, scores, strict=True)))
        pipe.execute()


def marks_keys(candidate: Candidate, n_keys: int) -> list[str]:
    now_s = int(time.time())
    out: list[str] = []
    for i in range(n_keys):
        sku = sku_name(i + 1)
        sets = candidate.kind == "sets"
        out += bucket_keys(candidate, sku, now_s) if sets else [zset_marks_key(sku)]
    return out


def measure_marks(client: redis.Redis, candidate: Candidate, k: int, ids: int) -> dict[str, Any]:
    client.flushall()
    client.config_set(candidate.setting, candidate.limit)
    n_keys = max(10, min(50_000, ids // k))
    empty = used([client], 0.3)
    write_marks(client, candidate, k, n_keys)
    loaded = used([client], 0.3)
    names = [name for name in marks_keys(candidate, min(n_keys, 50)) if client.exists(name)]
    usage = [int(client.memory_usage(name, samples=0) or 0) for name in names]
    encoding = bytes(client.object("encoding", names[0])).decode()
    client.config_set(candidate.setting, DEFAULTS[candidate.setting])
    return {
        "candidate": candidate.name, "k": k, "keys": n_keys, "bytes": loaded - empty,
        "per_id": (loaded - empty) / (n_keys * k), "per_key": (loaded - empty) / n_keys,
        "memory_usage_per_id": sum(usage) / min(n_keys, 50) / k, "encoding": encoding,
    }  # fmt: skip


# Lookups of one id a call, as a steady consumer's batches have about one event per sku.
LOOKUP_ZSET = """
local hits = 0
for r = 1, tonumber(ARGV[1]) do
  for i = 2, #ARGV do
    if redis.call('ZMSCORE', KEYS[1], ARGV[i])[1] then hits = hits + 1 end
  end
end
return hits
"""
LOOKUP_SETS = """
local hits = 0
for r = 1, tonumber(ARGV[1]) do
  for i = 2, #ARGV do
    for b = 1, #KEYS do
      hits = hits + redis.call('SMISMEMBER', KEYS[b], ARGV[i])[1]
    end
  end
end
return hits
"""
LOOKUP_BLOB = """
local hits = 0
for r = 1, tonumber(ARGV[1]) do
  for i = 2, #ARGV do
    local blob = redis.call('GET', KEYS[1]) or ''
    local from = 1
    while true do
      local at = string.find(blob, ARGV[i], from, true)
      if not at then break end
      if (at - 1) % 12 == 0 then hits = hits + 1; break end
      from = at + 1
    end
  end
end
return hits
"""
LOOKUPS = ((TODAY, 12), (TODAY, 121), (DIGEST_S, 121), (BLOB, 121), (DAYS, 121), (HALVES, 121),
           (TODAY, 1210), (TODAY_LP, 1210), (DIGEST_S_LP, 1210), (BLOB, 1210), (DAYS, 1210),
           (HALVES, 1210), (DAYS_RAISED, 12096), (HALVES_RAISED, 12096))  # fmt: skip


def lookup_us(client: redis.Redis, candidate: Candidate, k: int, runs: int) -> list[float]:
    """µs per lookup of an absent id (a new event's), in a Lua loop, an id a call."""
    client.flushall()
    client.config_set(candidate.setting, candidate.limit)
    write_marks(client, candidate, k, 1)
    client.config_set(candidate.setting, DEFAULTS[candidate.setting])
    names = marks_keys(candidate, 1)
    absent = [f"x-{j:09d}-0" for j in range(10)]
    args = (
        [digest(e) for e in absent]
        if candidate.member == "digest"
        else [e.encode() for e in absent]
    )
    if candidate.kind == "sets":
        args = [as_int64(a) for a in args]
    script = {"blob": LOOKUP_BLOB, "sets": LOOKUP_SETS}.get(candidate.kind, LOOKUP_ZSET)
    rounds = 2000
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        client.eval(script, len(names), *names, rounds, *args)
        out.append((time.perf_counter() - started) * 1e6 / (rounds * len(args)))
    return out


# -- part 3: sizes --------------------------------------------------------------------


def per_key(points: dict[int, float], k: float) -> float:
    """Bytes of one sku's marks with k ids, linear between (and past) measured points."""
    xs = sorted(points)
    if k <= xs[0] or len(xs) == 1:
        return points[xs[0]] * k / xs[0]
    for lo, hi in itertools.pairwise(xs):
        if k <= hi:
            return points[lo] + (points[hi] - points[lo]) * (k - lo) / (hi - lo)
    lo, hi = xs[-2], xs[-1]
    return points[hi] + (points[hi] - points[lo]) * (k - hi) / (hi - lo)


COMPACT = ("listpack", "intset", "raw", "embstr")  # else skiplist or hashtable


@dataclass(frozen=True)
class Model:
    """A way of keeping marks, for the sizes: per-sku bytes by ids (compact encodings up to
    ``limit`` ids per sku, the others past it), and what it retains."""

    name: str
    compact: dict[int, float]  # ids per sku -> bytes per sku
    big: dict[int, float]
    limit: float
    retention: float  # sets: ids kept per id of the window; else trimmed on 1 write in 16

    def per_sku(self, ids: float) -> float:
        if ids <= self.limit or not self.big:
            return per_key(self.compact, ids)
        return per_key(self.big, ids)

    def retained(self, ids_in_window: float) -> float:
        """Ids a sku holds on average when ``ids_in_window`` arrive in a window."""
        if self.retention > 1:
            return ids_in_window * self.retention
        return ids_in_window + TRIM_EVERY  # about TRIM_EVERY writes (an id each) past it

    def bytes(self, skus: int, ids: float, skew: bool = False) -> float:
        """All skus' marks, ``ids`` arriving per window: spread evenly, or 80% of them on
        20% of the skus."""
        if not skew:
            return skus * self.per_sku(self.retained(ids / skus))
        hot, cold = 0.2 * skus, 0.8 * skus
        return hot * self.per_sku(self.retained(0.8 * ids / hot)) + cold * self.per_sku(
            self.retained(0.2 * ids / cold)
        )


def model(cells: list[dict[str, Any]], name: str, raised: Candidate, base: Candidate) -> Model:
    """Compact figures of ``raised`` (a raised encoding limit) and ``base``, and ``base``'s
    past the limit."""
    compact = {c["k"]: c["per_key"] for c in cells
               if c["candidate"] in (raised.name, base.name) and c["encoding"] in COMPACT}  # fmt: skip
    big = {c["k"]: c["per_key"] for c in cells
           if c["candidate"] == base.name and c["encoding"] not in COMPACT}  # fmt: skip
    limit = raised.limit * raised.buckets if raised.kind != "blob" else math.inf
    return Model(name, compact, big, limit, raised.retention)


def false_duplicates(skus: int, ids: float, retention: float, skew: bool = False) -> float:
    """Expected events taken for duplicates per window with 64-bit digests: each of the
    window's ``ids`` events matches one of the n digests its sku holds (``retention`` x its
    ids in a window) with probability n / 2^64."""
    if not skew:
        return ids * (retention * ids / skus) / 2.0**64
    hot = 0.8 * ids * (retention * 0.8 * ids / (0.2 * skus))
    cold = 0.2 * ids * (retention * 0.2 * ids / (0.8 * skus))
    return (hot + cold) / 2.0**64


def primaries_for(total: float) -> int:
    """Primaries to keep each under 25 GB of data."""
    return max(1, math.ceil(total / (25 * GB)))


def shards_for(primaries: int) -> int:
    """At least 4 shards per primary (room to add primaries: the count is fixed), 16 at least
    on a cluster, 1 on one Redis."""
    if primaries == 1:
        return 1
    return max(16, 1 << math.ceil(math.log2(4 * primaries)))


# -- the run --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("memory benchmark: Redis bytes per sku, document, mark; sizes", argv)
    stop_on_sigterm()
    plan = loads(args.size)
    ids_per_cell = 600_000 if args.size == "small" else 1_500_000
    report = Report("memory", args.size, "Memory: Redis bytes per sku, location, document, mark")
    report.parameters = {
        "loads": {n: f"{x.skus:,} skus x {x.events} events, {x.locations} locations, {x.network}"
                     f" network, {x.store}{', trickle' if x.trickle else ''}"
                  for n, x in plan.items()},
        "mark_ids_per_cell": ids_per_cell, "k_grid": K_GRID, "runs": args.runs,
    }  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    cells: list[dict[str, Any]] = []
    lookups: dict[str, list[float]] = {}
    with Bench("memory") as bench:
        stores: dict[str, Store] = {}
        for name, load in plan.items():
            results[name] = run_load(bench, stores, load)
        client = stores["single"].nodes()[0]
        report.details["allocator"] = client.info("memory").get("mem_allocator")
        with timed(f"marks: {len(CANDIDATES)} representations x k in {K_GRID}"):
            for candidate in CANDIDATES:
                for k in K_GRID:
                    if candidate.relevant(k):
                        cells.append(measure_marks(client, candidate, k, ids_per_cell))
        with timed("lookups"):
            for candidate, k in LOOKUPS:
                lookups[f"{candidate.name} @{k}"] = lookup_us(client, candidate, k, args.runs)
        client.flushall()
        client.close()

    r = results

    def per_sku(x: dict[str, Any], what: str) -> float:
        return float(x[what]) / float(x["skus"])

    def mark(x: dict[str, Any]) -> float:
        return float(x["marks_bytes"]) / max(1.0, float(x["marks"]))

    def resident(x: dict[str, Any]) -> float:
        """Per sku, what deleting every key freed, but the drained or time-bounded shard keys
        (outbox, changes, staged)."""
        gone = sum(v["bytes"] for k, v in x["shard_keys"].items() if k in TRANSIENT)
        return float(x["loaded"] - x["left"] - gone) / float(x["skus"])

    def shard_part(x: dict[str, Any], kind: str) -> dict[str, float]:
        return dict(x["shard_keys"].get(kind, {"keys": 0, "entries": 0, "bytes": 0}))

    # Per (sku, location) and per sku, from the large network at 50 and 10 locations.
    large, large10, bench_ = r["large-50"], r["large-10"], r["bench"]
    per_location = (per_sku(large, "state_bytes") - per_sku(large10, "state_bytes")) / 40
    state_fixed = per_sku(large, "state_bytes") - 50 * per_location
    doc = large["projection_bytes"] / large["documents"]
    due = shard_part(large, "due")["bytes"] / large["skus"]
    bucket = bench_["key_buckets"] / bench_["keys"]
    trickle = shard_part(r["large-trickle"], "changes")
    per_change = trickle["bytes"] / trickle["entries"]
    changes_per_event = trickle["entries"] / r["large-trickle"]["events"]
    bulk_changes = shard_part(large, "changes")

    def linear(name: str, value: Callable[[dict[str, Any]], float]) -> None:
        big, small = r["bench"], r["bench-smaller"]
        report.add(Figure(f"{name} @{big['skus']:,} skus", "bytes", [value(big)],
                          f"same at {small['skus']:,} skus", [value(small)],
                          [("ratio", ">=", 0.9), ("ratio", "<=", 1.1)], target_text="linear: x0.9-1.1"))  # fmt: skip

    def info(
        name: str, unit: str, value: float, baseline: str = "", base: float | None = None
    ) -> None:
        report.add(Figure(name, unit, [value], baseline, [] if base is None else [base], informative=True))  # fmt: skip

    linear(f"projection per (channel, sku), {bench_['channels']} channels",
           lambda x: x["projection_bytes"] / x["documents"])  # fmt: skip
    linear("raw state per sku, 8 locations", lambda x: per_sku(x, "state_bytes"))
    linear("dedupe mark per event_id, 12 per sku", mark)
    linear("resident per sku in all", resident)
    info(f"projection per (channel, sku), {large['channels']} channels", "bytes", doc,
         f"{bench_['channels']} channels", bench_["projection_bytes"] / bench_["documents"])  # fmt: skip
    info("raw state per (sku, location) (50 vs 10 locations)", "bytes", per_location)
    info(
        "raw state per sku, fixed part (1 reservation, 1 inbound, 10 recent)", "bytes", state_fixed
    )
    info("raw state per sku at 50 locations", "bytes", per_sku(large, "state_bytes"))
    info("due set per sku (inbound or expiry ahead)", "bytes", due)
    info("key table: entry per key", "bytes", bench_["key_entry"])
    info("key table: buckets per key", "bytes", bucket)
    info("dedupe mark per event_id, 52 per sku (real path)", "bytes", mark(large))
    info("dedupe mark per event_id, 200 per sku (real path)", "bytes", mark(r["bench-200-events"]),
         "12 per sku", mark(bench_))  # fmt: skip
    info("dedupe mark per event_id, 52 per sku, 10 events a write", "bytes", mark(r["large-trickle"]),
         "1000 skus a write", mark(large))  # fmt: skip
    info("changes stream per changed (channel, sku), 10 events a write", "bytes", per_change,
         "1000 skus a write", bulk_changes["bytes"] / max(1, bulk_changes["entries"]))  # fmt: skip
    info(
        "changed (channel, sku) per event (20 channels, 10 events a write)",
        "count",
        changes_per_event,
    )
    sharded = shard_part(r["large-trickle-16-shards"], "changes")
    info("changes stream per changed (channel, sku), 10 events a write, 16 shards", "bytes",
         sharded["bytes"] / sharded["entries"], "1 shard", per_change)  # fmt: skip
    base = r["bench-smaller"]
    for name in ("bench-16-shards", "bench-cluster"):
        x = r[name]
        info(f"resident per sku, {x['store']}", "bytes", resident(x), base["store"], resident(base))
        for what, value in (("raw state per sku", lambda y: per_sku(y, "state_bytes")),
                            ("projection per (channel, sku)", lambda y: y["projection_bytes"] / y["documents"]),
                            ("dedupe mark per event_id", mark),
                            ("key table: entry per key", lambda y: y["key_entry"])):  # fmt: skip
            info(f"  {what}, {x['store']}", "bytes", value(x), base["store"], value(base))
        fixed = sum(v["bytes"] for k, v in x["shard_keys"].items() if k not in (*TRANSIENT, "due"))
        info(f"  shard keys but outbox, changes, staged, due: per shard, {x['store']}", "bytes",
             fixed / x["shards"])  # fmt: skip

    # Marks: bytes per id against today's at the same k, same run.
    today = {c["k"]: c for c in cells if c["candidate"] == TODAY.name}
    for c in cells:
        t = today[c["k"]]
        if c["candidate"] == TODAY.name:
            info(f"mark: {TODAY.name} @{c['k']} ({c['encoding']})", "bytes per id", c["per_id"],
                 "MEMORY USAGE", c["memory_usage_per_id"])  # fmt: skip
        else:
            info(f"mark: {c['candidate']} @{c['k']} ({c['encoding']})", "bytes per id", c["per_id"],
                 f"today @{c['k']} ({t['encoding']})", t["per_id"])  # fmt: skip
    for k, which in ((12, "bench"), (52, "large-50"), (200, "bench-200-events")):
        info(f"mark check: direct ZADD @{k} against the real path", "bytes per id", today[k]["per_id"],
             f"real path, {which}", mark(r[which]))  # fmt: skip
    base_lookup = lookups[f"{TODAY.name} @1210"]
    for name, runs in lookups.items():
        report.add(Figure(f"lookup of an absent id: {name}", "µs", runs,
                          f"{TODAY.name} @1210 (skiplist)", base_lookup, informative=True))  # fmt: skip

    # Sizes.
    models = [
        model(cells, "today", TODAY, TODAY),
        model(cells, "today, UUID ids", TODAY_UUID, TODAY_UUID),
        model(cells, "today, listpack 2048", TODAY_LP, TODAY),
        model(cells, "digest, ms", DIGEST_MS, DIGEST_MS),
        model(cells, "digest, s, listpack 2048", DIGEST_S_LP, DIGEST_S),
        model(cells, "blob", BLOB, BLOB),
        model(cells, "day sets", DAYS, DAYS),
        model(cells, "day sets, intset 4096", DAYS_RAISED, DAYS),
        model(cells, "half-window sets", HALVES, HALVES),
        model(cells, "half-window sets, intset 4096", HALVES_RAISED, HALVES),
    ]
    report.details["models"] = {m.name: {"compact": m.compact, "big": m.big} for m in models}
    state_per_sku = state_fixed + 50 * per_location + due + bucket
    sharded_change = sharded["bytes"] / sharded["entries"]
    sizes: list[dict[str, Any]] = []
    for skus, rate in SCENARIOS:
        ids = rate * WINDOW_S
        row: dict[str, Any] = {
            "skus": skus, "events_per_s": rate, "ids": ids, "ids_per_sku": ids / skus,
            "documents": skus * large["channels"] * doc, "state": skus * state_per_sku,
            "changes": rate * CHANGES_S * changes_per_event * per_change,
            "false_duplicates": false_duplicates(skus, ids, HALVES.retention),
            "false_duplicates_80_20": false_duplicates(skus, ids, HALVES.retention, True),
        }  # fmt: skip
        for m in models:
            row[f"marks {m.name}"] = m.bytes(skus, ids)
            row[f"marks {m.name}, 80/20"] = m.bytes(skus, ids, True)
        for label, marks in (("today", "today"), ("recommended", RECOMMENDED)):
            total = row["documents"] + row["state"] + row["changes"] + row[f"marks {marks}"]
            if primaries_for(total) > 1:  # several shards: smaller changes-stream entries
                total += row["changes"] * (sharded_change / per_change - 1)
            row[f"total {label}"] = total
            row[f"primaries {label}"] = primaries_for(total)
            row[f"shards {label}"] = shards_for(primaries_for(total))
        sizes.append(row)
    report.details["sizes"] = sizes
    say(f"\nsizes, GB: {large['channels']} channels, 50 locations per sku, 7-day marks, "
        "26-hour changes streams; ids = ids per sku in 7 days; marks: spread evenly "
        "(80% of events on 20% of skus)")  # fmt: skip
    for row in sizes:
        say(f"  {row['skus']:>10,} skus {row['events_per_s']:>6,}/s, {row['ids_per_sku']:>7,.0f} ids:"
            f" documents {row['documents'] / GB:,.1f}, state {row['state'] / GB:,.1f},"
            f" changes {row['changes'] / GB:,.1f} (1 shard)")  # fmt: skip
        for m in models:
            say(f"      marks {m.name:<32} {row[f'marks {m.name}'] / GB:>8,.1f}"
                f" ({row[f'marks {m.name}, 80/20'] / GB:,.1f})")  # fmt: skip
    say(f"\ntotals, GB, and primaries at <= 25 GB each (shards): today -> {RECOMMENDED}")
    for row in sizes:
        say(f"  {row['skus']:>10,} skus {row['events_per_s']:>6,}/s: {row['total today'] / GB:>8,.1f}"
            f" -> {row['total recommended'] / GB:>7,.1f}   {row['primaries today']}"
            f" ({row['shards today']}) -> {row['primaries recommended']} ({row['shards recommended']});"
            f" false duplicates per window {row['false_duplicates']:.1e}")  # fmt: skip
    report.series["mark bytes per id by ids per sku"] = {
        name: {str(c["k"]): c["per_id"] for c in cells if c["candidate"] == name}
        for name in dict.fromkeys(c["candidate"] for c in cells)
        if name in {c.name for c in CANDIDATES if c.default}
    }
    report.series_unit["mark bytes per id by ids per sku"] = "bytes"
    report.details["results"] = results
    report.details["marks"] = cells
    report.details["lookups_us"] = lookups
    report.notes.append(
        "memory: one measurement each (used_memory deltas less client buffers, scripts and "
        f"cluster links; they repeat to a byte or two per item); lookups: median of {args.runs}. "
        "Real-path event ids are 13-15 characters, sku names 11, location names 3-5."
    )
    report.notes.append(
        "'resident' leaves out the outbox (drained by the publisher in production) and staged "
        "ledger rows (flushed about once a second); the changes streams are kept 26 h."
    )
    report.notes.append(
        f"per sku = {fmt(state_fixed)} + L x {fmt(per_location)} (state) + {fmt(due)} (due) + "
        f"{fmt(bucket)} (the key table's buckets) + C x {fmt(doc)} (documents) + marks"
    )
    for name, x in r.items():
        left = x["left"] - x["empty"]
        report.notes.append(f"{name}: {x['events_per_s']:,.0f} events/s loading; after deleting "
                            f"everything {left:+,} bytes from empty ({x['keys_left']} keys)")  # fmt: skip
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
