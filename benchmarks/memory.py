"""Memory benchmark: Redis bytes per sku, per (sku, location), per (channel, sku) and per
dedupe mark on the atp:v3 key layout, the marks beside the sorted sets they replaced, and
the sizes of a deployment of 100k, 1M and 10M skus (issue 17, "Memory at scale";
docs/performance.md).

Part 1, the product as it is. Redis is loaded through the consumer's own fold and write
path (``ConsumerLoop.apply``, no broker): per sku, stock in one bin at each of L
locations, one open reservation, one inbound line, and more receipts into the first bin up
to E events (so the state's list of recent events is full). Then the parts are deleted one
at a time, and ``INFO memory`` used_memory, summed over the store's primaries, is read
before and after each (the main key table's buckets, ``MEMORY STATS``, are told apart):

- each shard's own keys (due set, outbox, staged ledger rows, offsets, changes streams,
  marker, digest key), by kind, per entry;
- the projection: every ``p:<channel>`` field of the sku hashes, per (channel, sku);
- the dedupe marks: every ``e:<bucket>:<sku>`` set, per event_id. A run's ids all land in
  the current bucket: one set per sku, as a sku holds in its first 3.5 days;
- the raw state: what is left of the sku hashes (version and state), per sku.

Loads: the benchmarks' network (5 channels, 8 locations) at two sizes (linear growth), with
16 shards on one Redis and on a 3-primary Redis Cluster (the shard count's effect); a
network of 20 channels over 50 locations with L = 50 and L = 10 (per (sku, location) is the
difference); 121 and 1,210 events per sku (the marks' ids per sku of the sizes below); and
a trickle of 10 events per write, interleaved over skus, for the changes streams' cost per
change as a steady consumer writes them.

Part 2, the dedupe marks written directly, under the product's key names, in the same run:

- the sets of atp:v3 (``keys.Layout.marks_key``; digests by ``marks.digests``, PEXPIREAT
  as write.lua sets it): k ids in one bucket (a run's shape: checked against the real
  path), and a sku's steady state at r ids a window: with the default 7-day window, 3
  buckets of 3.5 days are alive, the two before the current one full (r/2 ids each) and
  the current one filled to a fraction f of it, f spread evenly over the skus (a sku
  holds r x (1 + f/2) ids, 1.25 r on average: each id is kept 1 to 1.5 windows);
  with the product's ``set-max-intset-entries`` 4096 and with Redis' default 512;
- the layout before atp:v3, the baseline: a sorted set a sku, event_id -> ms, ids as the
  real path's (13-16 characters) and 36-character UUIDs, with Redis' default
  ``zset-max-listpack-entries`` 128; trimmed on 1 write of the sku in 16, so a sku held
  its window's ids and about 16 more.

Bytes from used_memory deltas, MEMORY USAGE beside them; and the time of a lookup of an
absent id (a new event's case), one id a call, in a Lua loop: SMISMEMBER in each of the
window's buckets, key names built as write.lua and the read script build them, against
ZMSCORE in the sorted set; and the client's time to digest an event_id.

Part 3, the sizes of 100k, 1M and 10M skus at 200, 2,000 and 20,000 events/s: from the
figures above (20 channels, 50 locations per sku, the 7-day window, the changes streams'
26 hours), the marks in the steady state measured at each size's ids per sku (and at 4x
and 0.25x of it: 80% of the ids on 20% of the skus), and the sorted sets' at the same ids
plus 16; totals and primaries (at most 25 GB each), atp:v3 against the sorted sets.

``python -m benchmarks.memory --size small|full [--runs N]`` (N: repetitions of the timings;
the memory figures are deterministic to a byte or two per item).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from atp_service.config import Settings
from atp_service.local.config_file import ApiKey, Channel, ConfigFile
from atp_service.store import keys, marks
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

# The marks' layout before atp:v3, part 2's baseline: a sorted set a sku (event_id -> ms),
# trimmed on 1 write of the sku in 16.
TRIM_EVERY = 16


def zset_marks_key(sku: str) -> str:
    return f"{keys.SINGLE.prefixes[0]}e:{sku}"


SKUS_PER_WRITE = 1000  # bulk loads: a batch of 1000 skus' events per apply()
EVENTS_PER_WRITE = 100_000  # at most (consumer.batch_size's default)
TRICKLE_EVENTS_PER_WRITE = 10  # about a batch at 2,000 events/s and batch_timeout_ms 5
SAMPLE = 300
WINDOW_S = 7 * 86_400  # consumer.dedupe_window_days, default 7 (atp_service/config.py)
CHANGES_S = keys.CHANGES_RETENTION_MS // 1000
GB = 1e9
TRANSIENT = ("outbox", "changes", "staged")  # drained, or kept for a time, not per sku
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
            Load("bench-121-events", "bench", 2_000 * f, 8, 121),
            Load("bench-1210-events", "bench", 200 * f, 8, 1210),
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


def skus_per_write(load: Load) -> int:
    return max(1, min(SKUS_PER_WRITE, EVENTS_PER_WRITE // load.events))


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
    per_write = skus_per_write(load)
    for start in range(0, load.skus, per_write):
        batch: list[AnyEvent] = []
        for i in range(start, min(load.skus, start + per_write)):
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
    """Wait until the key tables and the tables of keys' expiry times stop changing: a
    rehash in progress counts both tables."""
    last, deadline = key_table(nodes, expires=True), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = key_table(nodes, expires=True)
        if now == last:
            return
        last = now


def key_table(nodes: Sequence[redis.Redis], expires: bool = False) -> int:
    """Bytes of the main key tables: entries and buckets (MEMORY STATS
    overhead.hashtable.main), and with ``expires`` those of the expiry times' tables."""
    total = 0
    for node in nodes:
        stats: dict[str, Any] = node.memory_stats()
        db = stats.get("db.0") or {}
        total += int(db.get("overhead.hashtable.main", 0))
        if expires:
            total += int(db.get("overhead.hashtable.expires", 0))
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
    # The sampled skus' marks: a set per bucket ('<prefix>e:<bucket>:<sku>').
    marks_of: dict[str, list[str]] = {}
    for key in per_node[0]["marks"]:
        marks_of.setdefault(key.split("}:e:", 1)[1].split(":", 1)[1], []).append(key)
    marks_sample = [m for k in sample for m in marks_of.get(keys.sku_of(k) or "", [])]
    m_usage = _pipelined(first, marks_sample, lambda p, k: p.memory_usage(k, samples=0))
    m_card = _pipelined(first, marks_sample, lambda p, k: p.scard(k))
    encodings = _pipelined(first, marks_sample, lambda p, k: p.object("encoding", k))
    out["sample"] = {
        "memory_usage_sku_hash": statistics.mean(usage),
        "state_bytes": statistics.mean(state),
        "document_bytes": statistics.mean(docs),
        "fields_per_sku_hash": statistics.mean(hlen),
        "memory_usage_marks_per_id": sum(m_usage) / max(1, sum(m_card)),
        "marks_keys_per_sku": len(marks_sample) / max(1, len(sample)),
        "marks_encoding": sorted({bytes(e).decode() for e in encodings}),
    }  # fmt: skip
    # Each shard's own keys, one at a time. Counted first: reading the outbox and the
    # streams leaves reply buffers that INFO's client memory counts only a moment later.
    counts = [{key: entries(node, key) for key in sorted(names["shard"])}
              for node, names in zip(nodes, per_node, strict=True)]  # fmt: skip
    used(nodes, 0.5)
    shard: dict[str, dict[str, float]] = {}
    for node, counted in zip(nodes, counts, strict=True):
        for key, n in counted.items():
            before = int(node.info("memory")["used_memory"])
            node.delete(key)
            freed = before - int(node.info("memory")["used_memory"])
            row = shard.setdefault(kind_of(key), {"keys": 0, "entries": 0, "bytes": 0})
            row["keys"] += 1
            row["entries"] += n
            row["bytes"] += freed
    out["shard_keys"] = shard
    # Projection documents.
    before = used(nodes, 0.5)
    for node, names in zip(nodes, per_node, strict=True):
        _pipelined(node, names["sku"], lambda p, k: p.hdel(k, *fields))
    out["projection_bytes"] = before - used(nodes, 0.5)
    out["documents"] = skus * len(channels)
    # Dedupe marks.
    before = used(nodes)
    marks = 0
    for node, names in zip(nodes, per_node, strict=True):
        marks += sum(_pipelined(node, names["marks"], lambda p, k: p.scard(k)))
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
    how = (
        f"{TRICKLE_EVENTS_PER_WRITE} a write"
        if load.trickle
        else f"{skus_per_write(load)} skus a write"
    )
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


# -- part 2: the dedupe marks written directly ----------------------------------------

BUCKET_MS = keys.MARKS_BUCKET_MS
WINDOW_MS = WINDOW_S * 1000
INTSET = "set-max-intset-entries"  # the product's Redis sets 4096 (services.start_redis)
INTSET_PRODUCT = 4096
INTSET_DEFAULT = 512  # Redis' own default
ZSET_LISTPACK = "zset-max-listpack-entries"
ZSET_LISTPACK_DEFAULT = 128  # Redis' default, kept before atp:v3
DIGEST_KEY = bytes(range(marks.KEY_BYTES))  # direct writes' digest key (a shard's is random)
# Ids per sku in a window: the sizes' (each scenario's, and 4x and 0.25x of it: the hot and
# the cold skus when 80% of the ids fall on 20% of them), and the large network's 52.
SKEW = (1.0, 4.0, 0.25)
STEADY_GRID = tuple(sorted({round(rate * WINDOW_S / skus * m, 3) for skus, rate in SCENARIOS
                            for m in SKEW} | {52.0}))  # fmt: skip
ONE_BUCKET_GRID = (1, 12, 52, 121, 1210, 4096, 12096)  # a run's shape, as the real path's
ZSET_GRID = (12, 52, 121, 200, 500, 1210, 12096, 120960, 483840)  # ids held
UUID_GRID = (12, 121, 1210, 12096)
LOOKUP_GRID = (12, 121, 1210, 12096)


@dataclass(frozen=True)
class Marks:
    """A way the marks are laid out, written directly."""

    name: str
    kind: str  # "steady": atp:v3 sets, 3 buckets alive; "one": atp:v3, one bucket; "zset"
    limit: int = INTSET_PRODUCT  # set-max-intset-entries ("steady", "one")
    member: str = "id"  # "zset": "id" (as the real path's) or "uuid" (36 characters)
    ttl: bool = True  # "one": PEXPIREAT as write.lua sets it

    @property
    def setting(self) -> tuple[str, int]:
        return (
            (ZSET_LISTPACK, ZSET_LISTPACK_DEFAULT) if self.kind == "zset" else (INTSET, self.limit)
        )


STEADY = Marks("atp:v3, 3 buckets alive (steady state)", "steady")
STEADY_512 = Marks("atp:v3, 3 buckets alive, set-max-intset-entries 512", "steady", INTSET_DEFAULT)
ONE = Marks("atp:v3, one bucket", "one")
ONE_NO_TTL = Marks("atp:v3, one bucket, no expiry", "one", ttl=False)
OLD = Marks("before atp:v3: sorted set, event_id -> ms", "zset")
OLD_UUID = Marks("before atp:v3: sorted set, 36-character event_id -> ms", "zset", member="uuid")


def cells_plan() -> list[tuple[Marks, float]]:
    plan: list[tuple[Marks, float]] = [(OLD, k) for k in ZSET_GRID]
    plan += [(OLD_UUID, k) for k in UUID_GRID]
    plan += [(ONE, k) for k in ONE_BUCKET_GRID] + [(ONE_NO_TTL, 1)]
    plan += [(STEADY, r) for r in STEADY_GRID]
    # Redis' default limit changes anything only where a full bucket (r/2 ids) passes it.
    plan += [(STEADY_512, r) for r in STEADY_GRID if r / 2 > INTSET_DEFAULT]
    return plan


def buckets_alive() -> int:
    """Buckets a lookup covers, and alive for a steady sku, with the default window: those
    from the window's start to now (write.lua, the read script), each kept until a window
    after its end, so the oldest lives through the whole current bucket."""
    assert WINDOW_MS % BUCKET_MS == 0, "the steady state below assumes whole buckets a window"
    return WINDOW_MS // BUCKET_MS + 1


def bucket_counts(shape: Marks, r: float, n: int) -> list[list[int]]:
    """Per sku, its ids in each bucket, oldest first: "one", r ids in the current bucket;
    "steady", every bucket before the current one full (its share of the window's r ids)
    and the current one filled to f = (i + 0.5) / n of that (skus spread over the bucket's
    time). Fractions rounded at random (seeded), so the means are exact."""
    if shape.kind == "one":
        return [[round(r)] for _ in range(n)]
    rng = random.Random(round(r * 1000))
    full = r * BUCKET_MS / WINDOW_MS
    before = buckets_alive() - 1
    return [
        [int(full + rng.random()) for _ in range(before)]
        + [int((i + 0.5) / n * full + rng.random())]
        for i in range(n)
    ]


def ids_of(
    shape: Marks, index: int, count: int, rng: random.Random | None = None, tag: str = ""
) -> list[str]:
    if shape.member == "uuid":
        assert rng is not None
        return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]
    return [f"m-{index:09d}-{tag}{j}" for j in range(count)]


def write_sets(client: redis.Redis, shape: Marks, r: float, n: int, now_ms: int) -> tuple[int, int]:
    """A sku's marks for each of ``n`` skus as write.lua keeps them; (ids, keys) written."""
    current = now_ms // BUCKET_MS
    ids = written = pending = 0
    pipe = client.pipeline(transaction=False)
    for i, counts in enumerate(bucket_counts(shape, r, n)):
        sku = sku_name(i + 1)
        for b, count in zip(range(current - len(counts) + 1, current + 1), counts, strict=True):
            if not count:
                continue
            key = keys.SINGLE.marks_key(sku, b)
            members = marks.digests(DIGEST_KEY, ids_of(shape, i, count, tag=f"{b}-"))
            for at in range(0, count, 1000):
                pipe.sadd(key, *members[at : at + 1000])
            if shape.ttl:  # a window past the bucket's end (write.lua)
                pipe.pexpireat(key, (b + 1) * BUCKET_MS + WINDOW_MS)
            ids, written, pending = ids + count, written + 1, pending + count
        if pending >= 20_000:
            pipe.execute()
            pipe, pending = client.pipeline(transaction=False), 0
    pipe.execute()
    return ids, written


def write_zsets(client: redis.Redis, shape: Marks, k: int, n: int, now_ms: int) -> tuple[int, int]:
    """k ids for each of ``n`` skus in the sorted set of the layout before atp:v3."""
    rng = random.Random(k)
    step = max(1, 20_000 // k)
    for start in range(0, n, step):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + step)):
            members = ids_of(shape, i, k, rng)
            for at in range(0, k, 1000):
                chunk = members[at : at + 1000]
                pipe.zadd(zset_marks_key(sku_name(i + 1)),
                          {m: now_ms + at + j for j, m in enumerate(chunk)})  # fmt: skip
        pipe.execute()
    return n * k, n


def marks_names(client: redis.Redis, shape: Marks, skus: int, now_ms: int) -> list[str]:
    """The marks keys of the first ``skus`` skus that exist."""
    if shape.kind == "zset":
        names = [zset_marks_key(sku_name(i + 1)) for i in range(skus)]
    else:
        current = now_ms // BUCKET_MS
        names = [keys.SINGLE.marks_key(sku_name(i + 1), current - b)
                 for i in range(skus) for b in range(buckets_alive())]  # fmt: skip
    found = _pipelined(client, names, lambda p, k: p.exists(k))
    return [name for name, there in zip(names, found, strict=True) if there]


def measure_marks(client: redis.Redis, shape: Marks, r: float, budget: int) -> dict[str, Any]:
    """Bytes of ``shape`` at r ids a sku: ids held in one bucket or a sorted set, or a
    window's ids in the steady state."""
    client.flushall()
    setting, value = shape.setting
    before = client.config_get(setting)[setting]
    client.config_set(setting, value)
    held = r * (1 + 0.5 * BUCKET_MS / WINDOW_MS) if shape.kind == "steady" else r
    n = max(2, min(50_000, int(budget // max(1.0, held))))
    now_ms = time.time_ns() // 1_000_000
    empty = used([client], 0.3)
    if shape.kind == "zset":
        ids, n_keys = write_zsets(client, shape, round(r), n, now_ms)
    else:
        ids, n_keys = write_sets(client, shape, r, n, now_ms)
    loaded = used([client], 0.3)
    names = marks_names(client, shape, min(n, 50), now_ms)
    usage = _pipelined(client, names, lambda p, k: p.memory_usage(k, samples=0))
    cards = _pipelined(
        client, names, lambda p, k: p.zcard(k) if shape.kind == "zset" else p.scard(k)
    )
    encodings = _pipelined(client, names, lambda p, k: p.object("encoding", k))
    client.config_set(setting, before)
    return {
        "marks": shape.name, "k": r, "skus": n, "keys": n_keys, "ids": ids,
        "bytes": loaded - empty, "per_sku": (loaded - empty) / n, "per_id": (loaded - empty) / ids,
        "ids_per_sku": ids / n, "keys_per_sku": n_keys / n,
        "memory_usage_per_id": sum(int(u or 0) for u in usage) / max(1, sum(cards)),
        "encoding": "/".join(sorted({bytes(e).decode() for e in encodings})),
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
# As write.lua's marks_differ and the read script look ids up: the bucket keys' names built
# from the prefix, the window's first and last bucket and the sku, SMISMEMBER in each.
LOOKUP_SETS = """
local prefix, sku = ARGV[1], ARGV[2]
local first, last = tonumber(ARGV[3]), tonumber(ARGV[4])
local hits = 0
for r = 1, tonumber(ARGV[5]) do
  for i = 6, #ARGV do
    for b = first, last do
      local got = redis.call('SMISMEMBER', prefix .. 'e:' .. b .. ':' .. sku, ARGV[i])
      if got[1] == 1 then hits = hits + 1 end
    end
  end
end
return hits
"""
# The same with the names given (KEYS): what building them in Lua costs.
LOOKUP_SETS_GIVEN = """
local hits = 0
for r = 1, tonumber(ARGV[1]) do
  for i = 2, #ARGV do
    for b = 1, #KEYS do
      if redis.call('SMISMEMBER', KEYS[b], ARGV[i])[1] == 1 then hits = hits + 1 end
    end
  end
end
return hits
"""
LOOKUP_ROUNDS = 5000


def lookup_us(
    client: redis.Redis, shape: Marks, r: int, runs: int, names_given: bool = False
) -> list[float]:
    """µs per lookup of an absent id (a new event's), in a Lua loop, an id a call; a steady
    sku's sets with the current bucket half full (``names_given``: their names as KEYS)."""
    client.flushall()
    now_ms = time.time_ns() // 1_000_000
    absent = [f"x-{j:09d}-0" for j in range(10)]
    setting, value = shape.setting
    before = client.config_get(setting)[setting]
    client.config_set(setting, value)
    if shape.kind == "zset":
        write_zsets(client, shape, r, 1, now_ms)
        script, keys_, args = LOOKUP_ZSET, [zset_marks_key(sku_name(1))], [LOOKUP_ROUNDS, *absent]
    else:
        write_sets(client, shape, r, 1, now_ms)
        first, last = (now_ms - WINDOW_MS) // BUCKET_MS, now_ms // BUCKET_MS
        digests = marks.digests(DIGEST_KEY, absent)
        if names_given:
            keys_ = [keys.SINGLE.marks_key(sku_name(1), b) for b in range(first, last + 1)]
            script, args = LOOKUP_SETS_GIVEN, [LOOKUP_ROUNDS, *digests]
        else:
            script, keys_ = LOOKUP_SETS, []
            args = [keys.SINGLE.prefixes[0], sku_name(1), first, last, LOOKUP_ROUNDS, *digests]
    client.config_set(setting, before)
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        hits = client.eval(script, len(keys_), *keys_, *args)
        out.append((time.perf_counter() - started) * 1e6 / (LOOKUP_ROUNDS * len(absent)))
        assert hits == 0, f"{shape.name}: an absent id found"
    return out


def digest_us(runs: int) -> list[float]:
    """µs per event_id of ``marks.digests`` (the client's, for every id it reads or writes)."""
    ids = [f"m-{i:09d}-{i % 60}" for i in range(100_000)]
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        marks.digests(DIGEST_KEY, ids)
        out.append((time.perf_counter() - started) * 1e6 / len(ids))
    return out


# -- part 3: sizes --------------------------------------------------------------------


def per_key(points: dict[float, float], k: float) -> float:
    """Bytes of one sku's marks with k ids, linear between (and past) measured points."""
    xs = sorted(points)
    if k <= xs[0] or len(xs) == 1:
        return points[xs[0]] * k / xs[0]
    for lo, hi in itertools.pairwise(xs):
        if k <= hi:
            return points[lo] + (points[hi] - points[lo]) * (k - lo) / (hi - lo)
    lo, hi = xs[-2], xs[-1]
    return points[hi] + (points[hi] - points[lo]) * (k - hi) / (hi - lo)


@dataclass(frozen=True)
class Model:
    """A layout of the marks, for the sizes: a sku's bytes by the ids it receives in a
    window."""

    name: str
    per_sku: Callable[[float], float]

    def bytes(self, skus: int, ids: float, skew: bool = False) -> float:
        """All skus' marks, ``ids`` arriving per window: spread evenly, or 80% of them on
        20% of the skus."""
        if not skew:
            return skus * self.per_sku(ids / skus)
        hot, cold = 0.2 * skus, 0.8 * skus
        return hot * self.per_sku(0.8 * ids / hot) + cold * self.per_sku(0.2 * ids / cold)


def old_model(cells: list[dict[str, Any]]) -> Model:
    """The sorted sets: a listpack up to 128 ids, a skiplist past; a sku held its window's
    ids and about TRIM_EVERY more (its writes of an id each since its last trim)."""
    mine = [c for c in cells if c["marks"] == OLD.name]
    compact = {c["k"]: c["per_sku"] for c in mine if c["encoding"] == "listpack"}
    big = {c["k"]: c["per_sku"] for c in mine if c["encoding"] != "listpack"}

    def per_sku(r: float) -> float:
        held = r + TRIM_EVERY
        return per_key(compact if held <= ZSET_LISTPACK_DEFAULT else big, held)

    return Model("before atp:v3 (sorted sets)", per_sku)


def steady_model(cells: list[dict[str, Any]], name: str, shape: Marks) -> Model:
    """atp:v3's sets in the steady state, measured at each r of the sizes (STEADY's where
    ``shape``'s limit changes nothing)."""
    points = {c["k"]: c["per_sku"] for c in cells if c["marks"] == STEADY.name}
    points |= {c["k"]: c["per_sku"] for c in cells if c["marks"] == shape.name}
    return Model(name, lambda r: per_key(points, r))


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
        "mark_ids_per_cell": ids_per_cell, "steady_grid": STEADY_GRID, "runs": args.runs,
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
        report.details["redis_settings"] = {
            **client.config_get(INTSET),
            **client.config_get(ZSET_LISTPACK),
        }
        plan_marks = cells_plan()
        with timed(f"marks: {len(plan_marks)} layouts and sizes, written directly"):
            for shape, r in plan_marks:
                cells.append(measure_marks(client, shape, r, ids_per_cell))
        with timed("lookups"):
            for r in LOOKUP_GRID:  # alternated, so that both see the same load
                for shape in (OLD, STEADY):
                    lookups[f"{shape.name} @{r:,}"] = lookup_us(client, shape, r, args.runs)
            lookups[f"{STEADY.name}, names given @1,210"] = lookup_us(
                client, STEADY, 1210, args.runs, names_given=True
            )
        client.flushall()
        client.close()
    digesting = digest_us(args.runs)

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

    def cell(shape: Marks, k: float) -> dict[str, Any]:
        return next(c for c in cells if c["marks"] == shape.name and c["k"] == k)

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
        name: str, unit: str, value: float | list[float], baseline: str = "",
        base: float | list[float] | None = None,
    ) -> None:  # fmt: skip
        runs = value if isinstance(value, list) else [value]
        base_runs = [] if base is None else base if isinstance(base, list) else [base]
        report.add(Figure(name, unit, runs, baseline, base_runs, informative=True))

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

    # The marks on the real path (one bucket a sku) against the sorted sets, same run.
    real_path = ((12, "bench"), (52, "large-50"), (121, "bench-121-events"),
                 (1210, "bench-1210-events"))  # fmt: skip
    for k, which in real_path:
        old = cell(OLD, k)
        info(f"dedupe mark per event_id, real path, {k:,} per sku (one bucket, "
             f"{'/'.join(r[which]['sample']['marks_encoding'])})", "bytes", mark(r[which]),
             f"before atp:v3 @{k:,} ({old['encoding']}), direct", old["per_id"])  # fmt: skip
    for k, which in real_path:
        info(f"mark check: direct SADD @{k:,}, one bucket, against the real path", "bytes per id",
             cell(ONE, k)["per_id"], f"real path, {which}", mark(r[which]))  # fmt: skip
    info("dedupe mark per event_id, 52 per sku, 10 events a write", "bytes", mark(r["large-trickle"]),
         "1000 skus a write", mark(large))  # fmt: skip
    info("a bucket key with 1 id (name, set, expiry, key table entries)", "bytes",
         cell(ONE, 1)["per_sku"], "without its expiry", cell(ONE_NO_TTL, 1)["per_sku"])  # fmt: skip
    slope = (cell(ONE, 1210)["per_sku"] - cell(ONE, 121)["per_sku"]) / (1210 - 121)
    info("an id more in an intset (121 to 1,210 in one bucket)", "bytes", slope)
    info(f"one bucket of 12,096 ids ({cell(ONE, 12096)['encoding']}), per id", "bytes",
         cell(ONE, 12096)["per_id"], f"4,096 ids ({cell(ONE, 4096)['encoding']})",
         cell(ONE, 4096)["per_id"])  # fmt: skip

    # A sku's marks in the steady state (3 buckets alive, 1 to 1.5 windows of ids held)
    # against the sorted sets' at the same ids a window, same run.
    before = old_model(cells)
    models = [
        before,
        steady_model(cells, "atp:v3, set-max-intset-entries 4096", STEADY),
        steady_model(cells, "atp:v3, set-max-intset-entries 512", STEADY_512),
    ]
    for k in STEADY_GRID:
        c = cell(STEADY, k)
        info(f"marks per sku at {k:,.0f} ids a window, steady state ({c['encoding']}; "
             f"{c['ids_per_sku']:,.1f} ids in {c['keys_per_sku']:.2f} keys)", "bytes",
             c["per_sku"], f"before atp:v3, {k + TRIM_EVERY:,.0f} ids held (interpolated)",
             before.per_sku(k))  # fmt: skip
    for c in cells:
        if c["marks"] == STEADY_512.name:
            info(f"marks per sku at {c['k']:,.0f} ids a window, set-max-intset-entries 512 "
                 f"({c['encoding']})", "bytes", c["per_sku"], "4096",
                 cell(STEADY, c["k"])["per_sku"])  # fmt: skip
    for k in UUID_GRID:
        c = cell(OLD_UUID, k)
        info(f"before atp:v3 with 36-character ids @{k:,} ({c['encoding']})", "bytes per id",
             c["per_id"], f"13-16 characters ({cell(OLD, k)['encoding']})", cell(OLD, k)["per_id"])  # fmt: skip

    for k in LOOKUP_GRID:
        report.add(Figure(f"lookup of an absent id, @{k:,} ids a window: SMISMEMBER x "
                          f"{buckets_alive()} buckets", "µs", lookups[f"{STEADY.name} @{k:,}"],
                          f"before atp:v3: ZMSCORE @{k:,} ({cell(OLD, k)['encoding']})",
                          lookups[f"{OLD.name} @{k:,}"], informative=True))  # fmt: skip
    info("  the same @1,210, the buckets' names given (KEYS), not built in Lua", "µs",
         lookups[f"{STEADY.name}, names given @1,210"], "built in Lua",
         lookups[f"{STEADY.name} @1,210"])  # fmt: skip
    info("digest of an event_id (client, marks.digests)", "µs", digesting)

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

    # Sizes.
    retention = 1 + 0.5 * BUCKET_MS / WINDOW_MS
    state_per_sku = state_fixed + 50 * per_location + due + bucket
    sharded_change = sharded["bytes"] / sharded["entries"]
    sizes: list[dict[str, Any]] = []
    for skus, rate in SCENARIOS:
        ids = rate * WINDOW_S
        row: dict[str, Any] = {
            "skus": skus, "events_per_s": rate, "ids": ids, "ids_per_sku": ids / skus,
            "documents": skus * large["channels"] * doc, "state": skus * state_per_sku,
            "changes": rate * CHANGES_S * changes_per_event * per_change,
            "false_duplicates": false_duplicates(skus, ids, retention),
            "false_duplicates_80_20": false_duplicates(skus, ids, retention, True),
        }  # fmt: skip
        for m in models:
            row[f"marks {m.name}"] = m.bytes(skus, ids)
            row[f"marks {m.name}, 80/20"] = m.bytes(skus, ids, True)
        for label, m in (("old", models[0]), ("new", models[1]), ("new 512", models[2])):
            total = row["documents"] + row["state"] + row["changes"] + row[f"marks {m.name}"]
            if primaries_for(total) > 1:  # several shards: smaller changes-stream entries
                total += row["changes"] * (sharded_change / per_change - 1)
            row[f"total {label}"] = total
            row[f"primaries {label}"] = primaries_for(total)
            row[f"shards {label}"] = shards_for(primaries_for(total))
        sizes.append(row)
    report.details["sizes"] = sizes
    for row in sizes:
        if (row["skus"], row["events_per_s"]) in ((10_000_000, 2_000), (10_000_000, 20_000)):
            where = f"{row['skus']:,} skus, {row['events_per_s']:,} events/s"
            info(f"total GB at {where}, atp:v3", "GB", row["total new"] / GB,
                 "before atp:v3", row["total old"] / GB)  # fmt: skip
            info(f"  marks GB at {where}, atp:v3", "GB", row[f"marks {models[1].name}"] / GB,
                 "before atp:v3", row[f"marks {before.name}"] / GB)  # fmt: skip
    say(f"\nsizes, GB: {large['channels']} channels, 50 locations per sku, 7-day marks, "
        "26-hour changes streams; ids = ids per sku in 7 days; marks: spread evenly "
        "(80% of events on 20% of skus)")  # fmt: skip
    for row in sizes:
        say(f"  {row['skus']:>10,} skus {row['events_per_s']:>6,}/s, {row['ids_per_sku']:>7,.0f} ids:"
            f" documents {row['documents'] / GB:,.1f}, state {row['state'] / GB:,.1f},"
            f" changes {row['changes'] / GB:,.1f} (1 shard)")  # fmt: skip
        for m in models:
            say(f"      marks {m.name:<38} {row[f'marks {m.name}'] / GB:>8,.1f}"
                f" ({row[f'marks {m.name}, 80/20'] / GB:,.1f})")  # fmt: skip
    say(
        "\ntotals, GB, and primaries at <= 25 GB each (shards): before atp:v3 -> atp:v3 "
        "[atp:v3 with set-max-intset-entries 512]"
    )
    for row in sizes:
        say(f"  {row['skus']:>10,} skus {row['events_per_s']:>6,}/s: {row['total old'] / GB:>8,.1f}"
            f" -> {row['total new'] / GB:>7,.1f} [{row['total new 512'] / GB:,.1f}]"
            f"   {row['primaries old']} ({row['shards old']}) -> {row['primaries new']}"
            f" ({row['shards new']}); false duplicates per window {row['false_duplicates']:.1e}")  # fmt: skip
    panel = "marks: bytes per id received in a 7-day window, by ids per sku in it"
    report.series[panel] = {
        m.name: {f"{k:,.0f}": m.per_sku(k) / k for k in STEADY_GRID} for m in models
    }
    report.series_unit[panel] = "bytes"
    report.details["results"] = results
    report.details["marks"] = cells
    report.details["lookups_us"] = lookups
    report.details["digest_us"] = digesting
    report.notes.append(
        "memory: one measurement each (used_memory deltas less client buffers, scripts and "
        f"cluster links; they repeat to a byte or two per item); times: median of {args.runs}. "
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
    report.notes.append(
        f"marks, steady state: {buckets_alive()} buckets of {BUCKET_MS / 86_400_000:g} days "
        f"alive a sku, ids held {retention:g} x a window's on average (1 to "
        f"{1 + BUCKET_MS / WINDOW_MS:g}); the sorted sets held a window's and {TRIM_EVERY} more"
    )
    for name, x in r.items():
        left = x["left"] - x["empty"]
        report.notes.append(f"{name}: {x['events_per_s']:,.0f} events/s loading; after deleting "
                            f"everything {left:+,} bytes from empty ({x['keys_left']} keys)")  # fmt: skip
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
