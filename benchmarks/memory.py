"""Memory benchmark: Redis bytes per projection document, raw state and dedupe mark.

Redis is loaded through the consumer's own fold and write path (``StreamProjector.apply``,
no broker) with S skus, each with stock at 4 of the 8 locations (one receipt per location),
one open reservation and one inbound line: 6 events, so 6 dedupe marks, per sku. Then the
parts are deleted one at a time and ``INFO memory`` used_memory is read before and after
each deletion:

- each shared key (due set, outbox, changes-feed streams, offsets), per entry;
- the projection: every ``p:<channel>`` field, per (channel, sku);
- the dedupe marks: every ``...:seen`` sorted set, per event_id;
- the raw state: what is left of the sku hashes (version + state), per sku and per
  (sku, location).

``MEMORY USAGE`` and ``HSTRLEN`` of a sample of keys are reported beside the deltas. Done at
two sizes (small: 10k and 100k skus, full: 100k and 1M); linear growth means the same
bytes per item at both.

``python -m benchmarks.memory --size small|full``
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from atp_service.store import keys
from benchmarks.common import (
    LOCATIONS,
    Bench,
    Figure,
    Report,
    bench_config,
    direct_projector,
    parse_args,
    say,
    stop_on_sigterm,
    timed,
)
from benchmarks.workload import sku_name
from streams.changeset import decode_outbox, projection_field
from streams.events import AnyEvent, BinMovement, Inbound, ReservationCreated

SIZES = {"small": (10_000, 100_000), "full": (100_000, 1_000_000)}
LOCATIONS_PER_SKU = 4
EVENTS_PER_SKU = LOCATIONS_PER_SKU + 2
SKUS_PER_BATCH = 1000  # 6000 events per apply(), about the consumer's batch of 5000
SAMPLE = 300


def sku_events(index: int, sku: str, now: datetime) -> list[AnyEvent]:
    at = now
    first = index % len(LOCATIONS)
    locations = [LOCATIONS[(first + k * 2) % len(LOCATIONS)] for k in range(LOCATIONS_PER_SKU)]
    out: list[AnyEvent] = [
        BinMovement(
            event_id=f"m-{index:09d}-{k}",
            occurred_at=at,
            sku=sku,
            location=location,
            quantity=20 + index % 50,
            to_bin=f"A-{k + 1:02d}-01",
            to_status="available",
        )
        for k, location in enumerate(locations)
    ]
    out.append(
        ReservationCreated(
            event_id=f"r-{index:09d}",
            occurred_at=at,
            sku=sku,
            reservation_id=f"ORD-{index:09d}:1",
            channel="b2b",
            location=locations[0],
            quantity=2,
        )
    )
    out.append(
        Inbound(
            event_id=f"i-{index:09d}",
            occurred_at=at,
            sku=sku,
            inbound_id=f"PO-{index:09d}:1",
            location=locations[1],
            quantity=40,
            eta=(now + timedelta(days=5)).date(),
        )
    )
    return out


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def load(projector: Any, n_skus: int) -> float:
    now = datetime.now(UTC)
    started = time.perf_counter()
    for start in range(0, n_skus, SKUS_PER_BATCH):
        events: list[AnyEvent] = []
        for i in range(start, min(n_skus, start + SKUS_PER_BATCH)):
            events.extend(sku_events(i, sku_name(i + 1), now))
        projector.apply(events, {})
    return time.perf_counter() - started


def _chunks(items: Sequence[str], size: int = 5000) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def entries(client: redis.Redis, key: str) -> int:
    """Items in a shared key; for a changes stream, the skus its entries name (an entry
    may list many skus, newline-separated)."""
    kind = bytes(client.type(key)).decode()  # type: ignore[arg-type]
    if key == keys.SINGLE.outbox_key(
        0
    ):  # one entry per write, holding that write's availability events
        blobs: list[bytes] = client.hvals(key)  # type: ignore[assignment]
        return sum(len(decode_outbox(blob)) for blob in blobs)
    if kind == "stream":
        items, start = 0, "-"
        while True:
            page: list[Any] = client.xrange(key, min=start, count=1000)  # type: ignore[assignment]
            for _, fields in page:
                items += sum(bytes(v).count(b"\n") + 1 for v in fields.values())
            if len(page) < 1000:
                return items
            start = "(" + page[-1][0].decode()
    counter = {"zset": client.zcard, "hash": client.hlen, "set": client.scard}
    return int(counter[kind](key)) if kind in counter else 1


def measure(client: redis.Redis, n_skus: int, channels: Sequence[str]) -> dict[str, Any]:
    skus = [sku_name(i + 1) for i in range(n_skus)]
    sku_keys = [keys.SINGLE.sku_key(s) for s in skus]
    seen_keys = [keys.SINGLE.seen_key(s) for s in skus]
    out: dict[str, Any] = {"skus": n_skus}
    # MEMORY USAGE samples before anything is deleted.
    sample = random.Random(n_skus).sample(range(n_skus), min(SAMPLE, n_skus))
    pipe = client.pipeline(transaction=False)
    for i in sample:
        pipe.memory_usage(sku_keys[i], samples=0)
        pipe.memory_usage(seen_keys[i], samples=0)
        pipe.hstrlen(sku_keys[i], keys.STATE_FIELD)
        for channel in channels:
            pipe.hstrlen(sku_keys[i], projection_field(channel))
    replies = pipe.execute()
    step = 3 + len(channels)
    out["sample_memory_usage_sku_hash"] = statistics.mean(replies[0::step])
    out["sample_memory_usage_seen"] = statistics.mean(replies[1::step])
    out["sample_state_bytes"] = statistics.mean(replies[2::step])
    out["sample_document_bytes"] = statistics.mean(
        x for k in range(len(channels)) for x in replies[3 + k :: step]
    )
    total = used_memory(client)
    out["used_memory_loaded"] = total
    # Shared keys first (not per sku).
    per_sku = (keys.SINGLE.prefixes[0] + p for p in ("s:", "e:", "k:", "l:"))
    shared = sorted(k.decode() for k in client.scan_iter(match=f"{keys.PREFIX}:*", count=10_000)
                    if not k.decode().startswith(tuple(per_sku)))  # fmt: skip
    out["shared"] = {}
    for key in shared:
        n = entries(client, key)
        before = used_memory(client)
        client.delete(key)
        freed = before - used_memory(client)
        out["shared"][key] = {"entries": n, "bytes": freed, "bytes_per_entry": freed / max(1, n)}
    # Projection documents.
    before = used_memory(client)
    fields = [projection_field(c) for c in channels]
    for chunk in _chunks(sku_keys):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.hdel(key, *fields)
        pipe.execute()
    out["projection_bytes"] = before - used_memory(client)
    # Dedupe marks.
    before = used_memory(client)
    marks = 0
    for chunk in _chunks(seen_keys):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.zcard(key)
        marks += sum(pipe.execute())
        client.delete(*chunk)
    out["marks"] = marks
    out["marks_bytes"] = before - used_memory(client)
    # What is left: the raw state (and version) per sku hash.
    before = used_memory(client)
    for chunk in _chunks(sku_keys):
        client.delete(*chunk)
    out["state_bytes"] = before - used_memory(client)
    out["used_memory_left"] = used_memory(client)
    out["keys_left"] = client.dbsize()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("memory benchmark: Redis bytes per document, state and dedupe mark", argv)
    stop_on_sigterm()
    sizes = SIZES[args.size]
    report = Report(
        "memory", args.size, "Memory: Redis bytes per projection, state and dedupe mark"
    )
    results: list[dict[str, Any]] = []
    with Bench("memory") as bench:
        redis_url = bench.start_redis()
        settings = bench.write_config(bench_config(redis_url, ledger_dir=bench.tmp / "ledger"))
        channels = [c.name for c in settings.channels]
        report.parameters = {
            "sizes": "/".join(f"{s:,}" for s in sizes), "channels": len(channels),
            "locations_per_sku": LOCATIONS_PER_SKU, "events_per_sku": EVENTS_PER_SKU,
            "event_id_length": len("m-000000001-0"),
        }  # fmt: skip
        client = bench.redis()
        info: dict[str, Any] = client.info("memory")
        report.details["allocator"] = info.get("mem_allocator")
        for n in sizes:
            client.flushall()
            projector = direct_projector(settings)
            empty = used_memory(client)
            with timed(f"load {n:,} skus ({n * EVENTS_PER_SKU:,} events through apply)"):
                seconds = load(projector, n)
            result = measure(client, n, channels)
            result["used_memory_empty"] = empty
            result["load_events_per_s"] = n * EVENTS_PER_SKU / seconds
            results.append(result)
            say(f"    {(result['used_memory_loaded'] - empty) / n:,.0f} bytes per sku in all")

    small, large = results
    label_small, label_large = f"{small['skus']:,} skus", f"{large['skus']:,} skus"

    def row(name: str, unit: str, value: Any) -> None:
        report.add(Figure(name, unit, [value(large)], f"same at {label_small}", [value(small)],
                          [("ratio", ">=", 0.8), ("ratio", "<=", 1.25)],
                          target_text="linear: x0.8-1.25"))  # fmt: skip

    n_channels = len(channels)
    row(
        f"projection per (channel, sku) @{label_large}",
        "bytes",
        lambda r: r["projection_bytes"] / (r["skus"] * n_channels),
    )
    row(f"raw state per sku @{label_large}", "bytes", lambda r: r["state_bytes"] / r["skus"])
    row(
        f"raw state per (sku, location) @{label_large}",
        "bytes",
        lambda r: r["state_bytes"] / (r["skus"] * LOCATIONS_PER_SKU),
    )
    row(
        f"dedupe mark per event_id @{label_large}",
        "bytes",
        lambda r: r["marks_bytes"] / max(1, r["marks"]),
    )
    row(
        f"everything per sku @{label_large}",
        "bytes",
        lambda r: (r["used_memory_loaded"] - r["used_memory_empty"]) / r["skus"],
    )
    for key in sorted(large["shared"]):
        if key in small["shared"] and large["shared"][key]["entries"] > 1:
            short = key.removeprefix(f"{keys.PREFIX}:")
            what = "per changed (channel, sku)" if short.startswith("changes") else "per entry"
            report.add(Figure(f"  shared key {short}: {what}", "bytes",
                              [large["shared"][key]["bytes_per_entry"]], f"same at {label_small}",
                              [small["shared"][key]["bytes_per_entry"]], informative=True))  # fmt: skip
    report.add(Figure("  MEMORY USAGE sku hash (sample)", "bytes", [large["sample_memory_usage_sku_hash"]],
                      f"same at {label_small}", [small["sample_memory_usage_sku_hash"]], informative=True))  # fmt: skip
    report.add(Figure("  MEMORY USAGE seen zset (sample)", "bytes", [large["sample_memory_usage_seen"]],
                      f"same at {label_small}", [small["sample_memory_usage_seen"]], informative=True))  # fmt: skip
    report.add(Figure("  HSTRLEN document (sample)", "bytes", [large["sample_document_bytes"]],
                      f"same at {label_small}", [small["sample_document_bytes"]], informative=True))  # fmt: skip
    report.add(Figure("  HSTRLEN state (sample)", "bytes", [large["sample_state_bytes"]],
                      f"same at {label_small}", [small["sample_state_bytes"]], informative=True))  # fmt: skip
    report.series["bytes per item at both sizes"] = {
        label: {
            "doc/(ch,sku)": r["projection_bytes"] / (r["skus"] * n_channels),
            "state/sku": r["state_bytes"] / r["skus"],
            "mark/event": r["marks_bytes"] / max(1, r["marks"]),
        }
        for label, r in ((label_small, small), (label_large, large))
    }
    report.series_unit["bytes per item at both sizes"] = "bytes"
    report.series_kind["bytes per item at both sizes"] = "bar"
    report.details["results"] = results
    report.notes.append(
        "one measurement per size (used_memory deltas are deterministic to a few bytes per item); "
        f"each sku: {LOCATIONS_PER_SKU} locations with one bin, 1 open reservation, 1 inbound line; "
        f"{EVENTS_PER_SKU} event_ids of 13-14 characters."
    )
    report.notes.append(
        "the outbox is drained by the consumer's publisher in production; here (no broker) it "
        "holds every write's availability events (one per changed (channel, sku)), measured per event."
    )
    left = large["used_memory_left"] - large["used_memory_empty"]
    report.notes.append(f"after deleting everything, used_memory was {left:+,} bytes from empty")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
