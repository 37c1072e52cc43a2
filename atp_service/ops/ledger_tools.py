"""Operator tools over the ledger: rebuild Redis, verify Redis, answer history questions.

All three recompute with the same fold and projection as the consumer, from the raw event
bytes the ledger kept, in the order each partition was applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import msgspec
import redis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from atp_service.config import Settings
from atp_service.model import projector_for
from atp_service.ops.topic_reader import TopicMissing, read_to_end
from atp_service.overrides import OverrideChanged, latest
from atp_service.runtime import store_for, sync_redis
from atp_service.store import keys
from atp_service.store.kit_records import KitRecord, KitRecords, definitions
from streams.changeset import build_changeset, projection_field
from streams.consumer.options import offset_field
from streams.events import AnyEvent, decode
from streams.fold import fold
from streams.kits import components_of, with_kits
from streams.ledger import Ledger, iter_rows_sql, parse_staged_field, staged_table, view_sql
from streams.projector import Availability
from streams.state import US_PER_DAY, SkuState, load_state, to_us

CHUNK = 500
log = logging.getLogger(__name__)


@dataclass
class Recomputed:
    states: dict[str, SkuState] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # offset field -> next offset
    seen: dict[str, list[str]] = field(default_factory=dict)
    events: int = 0


def _connect(settings: Settings) -> duckdb.DuckDBPyConnection | None:
    """DuckDB with the view ``ledger``: the files, plus the rows still staged in Redis (the
    consumer moves them to files about once a second; see streams/ledger.py)."""
    ledger = Ledger(settings.ledger.dir)
    try:
        inputs = {settings.topics.movements, settings.topics.reservations, settings.topics.inbound}
        staged = staged_table(
            {
                name: rows
                for name, rows in store_for(settings, sync_redis(settings)).staged_ledger().items()
                if parse_staged_field(name)[0] in inputs
            }
        )
    except redis.RedisError as exc:
        log.warning("the staged ledger rows in Redis are not readable (%s): files only", exc)
        staged = None
    has_files = bool(ledger.files())
    if staged is None and not has_files:
        return None
    connection = duckdb.connect()
    if staged is not None:
        connection.register("ledger_staged", staged)
    if has_files and staged is not None:
        connection.execute(view_sql(ledger, "ledger_files"))
        # A consumer may move staged rows into a file between reading them here and DuckDB
        # listing the files: a message's position is in the ledger once, so positions
        # already in a file win.
        connection.execute(
            "CREATE VIEW ledger AS SELECT * FROM ledger_files UNION ALL BY NAME "
            "SELECT * FROM ledger_staged s WHERE NOT EXISTS (SELECT 1 FROM ledger_files f "
            "WHERE f.source_topic = s.source_topic AND f.source_partition = s.source_partition "
            "AND f.source_offset = s.source_offset)"
        )
    elif has_files:
        connection.execute(view_sql(ledger))
    else:
        connection.execute("CREATE VIEW ledger AS SELECT * FROM ledger_staged")
    return connection


def recompute(
    settings: Settings,
    now_us: int,
    below: dict[str, int] | None = None,
    applied_until_us: int | None = None,
    sku: str | None = None,
) -> Recomputed:
    """Fold the ledger.

    Args:
        below: only rows below these offsets (field "topic\\x1fpartition" -> next offset),
            e.g. the offsets stored in Redis, so a batch not yet in Redis is left out; a
            partition without an entry is taken whole.
        applied_until_us: only rows applied at or before this time.
        sku: only this sku's rows.
    """
    out = Recomputed()
    connection = _connect(settings)
    if connection is None:
        return out
    query = iter_rows_sql()
    filters = []
    params: list[Any] = []
    if applied_until_us is not None:
        filters.append("applied_at <= make_timestamp(?)")
        params.append(applied_until_us)
    if sku is not None:
        filters.append("(sku = ? OR status = 'dead_letter')")
        params.append(sku)
    if filters:
        query = query.replace("FROM ledger", "FROM ledger WHERE " + " AND ".join(filters))
    events: list[AnyEvent] = []
    known = frozenset(c.name for c in settings.channels)
    for topic, partition, offset, status, raw, _ in connection.execute(query, params).fetchall():
        name = offset_field(topic, partition)
        limit = below.get(name) if below is not None else None
        if limit is not None and offset >= limit:
            continue  # applied to the ledger, not yet to Redis (the consumer is mid-batch)
        out.offsets[name] = max(out.offsets.get(name, 0), offset + 1)
        if status in ("dead_letter", "duplicate"):
            continue
        events.append(decode(bytes(raw), known))
    connection.close()
    window = int(settings.consumer.dedupe_window_days * US_PER_DAY)
    result = fold({}, events, seen=frozenset(), now_us=now_us, window_us=window)
    out.states = result.states
    out.events = len(result.applied)
    for event in result.applied:
        out.seen.setdefault(event.sku, []).append(event.event_id)
    return out


def _sku_keys(client: redis.Redis) -> Iterator[str]:
    for key in client.scan_iter(match=keys.SKU_PATTERN, count=1000, _type="hash"):
        sku = keys.sku_of(key)
        if sku is not None:
            yield sku


def rebuild(settings: Settings, console: Console) -> int:
    """Rebuild raw state, projection, dedupe marks and offsets from the ledger."""
    client = sync_redis(settings)
    store = store_for(settings, client)
    projector = projector_for(settings)
    now = time.time_ns() // 1000
    console.print(f"reading the ledger in {settings.ledger.dir} …")
    data = recompute(settings, now)
    console.print(f"{data.events} events over {len(data.states)} skus")
    # Overrides set over HTTP are configuration, not events: what Redis still has, and over
    # it every change recorded on the overrides topic that Redis does not have (all of them,
    # after a data loss).
    layout = store.layout
    overrides, seqs = _overrides(client, layout, list(data.states))
    try:
        recorded = latest(
            message.value() or b""
            for message in read_to_end(
                settings.kafka.bootstrap, settings.topics.overrides, "rebuild"
            )
        )
    except TopicMissing as exc:
        # A deployment where no override was ever set over HTTP may not have the topic.
        console.print(f"[yellow]{exc}: no safety-stock override set over HTTP is restored")
        recorded = {}
    kits = _kits_to_restore(client, layout, recorded)
    for (kind, channel, sku), change in recorded.items():
        if kind != "safety_stock":
            continue
        if change.seq and change.seq <= seqs.get(sku, 0):
            continue  # Redis still holds this change or a later one
        mine = overrides.setdefault(sku, {})
        if change.quantity is None:
            mine.pop(channel, None)
        else:
            mine[channel] = change.quantity
        seqs[sku] = max(seqs.get(sku, 0), change.seq)
        data.states.setdefault(sku, SkuState(sku=sku))
    console.print(
        f"{sum(1 for kind, _, _ in recorded if kind == 'safety_stock')} safety-stock overrides"
        f" and {sum(1 for kind, _, _ in recorded if kind == 'kit')} kits recorded over HTTP"
    )
    # Remove what is left of the old projection. Orders and what re-plans made of their
    # lines stay: the API and the re-plans write them, and the ledger does not hold them;
    # so do the staged ledger rows, which are part of the ledger.
    keep = {layout.staged_key(shard).encode() for shard in range(layout.shards)}
    stale = [
        key
        for key in client.scan_iter(match=f"{keys.PREFIX}:{{*", count=1000)
        if not keys.is_lines_key(key) and not keys.is_rows_key(key) and key not in keep
    ]
    stale.append(layout.offsets_key(settings.kafka.group_id).encode())
    for i in range(0, len(stale), 1000):  # a key per command: on a cluster, many slots
        pipe = client.pipeline(transaction=False)
        for key in stale[i : i + 1000]:
            pipe.unlink(key)
        pipe.execute()
    # Kits before the states: their components' sets of kits were among the keys removed.
    records = KitRecords(client, layout)
    for record in kits.values():
        records.put(record.sku, record, now // 1000)
    records.install([kit.definition() for kit in settings.kits], now // 1000)
    in_force = definitions(records.all().values())
    for sku in in_force:
        data.states.setdefault(sku, SkuState(sku=sku))

    def rebuilt(s: str) -> SkuState:
        return msgspec.structs.replace(
            data.states[s], safety_stock=overrides.get(s, {}), override_seq=seqs.get(s, 0)
        )

    skus = sorted(data.states)
    # The write script refuses to write without the marker; until the rebuild finishes it
    # says "rebuilding", and no consumer starts on a half-rebuilt projection.
    store.set_marker("rebuilding")
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("rebuilding", total=len(skus))
        for i in range(0, len(skus), CHUNK):
            chunk = skus[i : i + CHUNK]
            kits_here = {s: in_force[s] for s in chunk if s in in_force}
            parts = {c: rebuilt(c) if c in data.states else SkuState(sku=c)
                     for c in components_of(kits_here)}  # fmt: skip
            states = with_kits([rebuilt(s) for s in chunk], kits_here, parts, projector, now)
            changes = build_changeset(
                states, {}, projector, now, seen={s: data.seen.get(s, []) for s in chunk}
            )
            for write in changes.skus:
                write.expected_version = None
            store.write(changes, now // 1000)
            progress.advance(task, len(chunk))
    if data.offsets:
        store.restore_offsets(data.offsets)
    store.set_marker("rebuilt")
    console.print(f"rebuilt {len(skus)} skus; offsets restored for {len(data.offsets)} partitions")
    return 0


def _kits_to_restore(
    client: redis.Redis,
    layout: keys.Layout,
    recorded: Mapping[tuple[str, str, str], OverrideChanged],
) -> dict[str, KitRecord]:
    """The kit records Redis still holds, and over them every change recorded on the
    overrides topic that Redis does not have."""
    out = KitRecords(client, layout).all()
    for (kind, _, sku), change in recorded.items():
        old = out.get(sku)
        if kind != "kit" or (old is not None and old.source == "api" and change.seq <= old.seq):
            continue
        out[sku] = KitRecord(sku, change.components or (), "api", change.seq)
    return out


def _overrides(
    client: redis.Redis, layout: keys.Layout, skus: Sequence[str]
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """The HTTP overrides Redis still holds, per sku, and each sku's count of them."""
    out: dict[str, dict[str, int]] = {}
    seqs: dict[str, int] = {}
    for sku in skus:
        raw = client.hget(layout.sku_key(sku), keys.STATE_FIELD)
        if raw:
            state = load_state(sku, raw)  # type: ignore[arg-type]
            if state.safety_stock:
                out[sku] = dict(state.safety_stock)
            if state.override_seq:
                seqs[sku] = state.override_seq
    return out, seqs


_doc_decoder = msgspec.json.Decoder(Availability)


def verify(settings: Settings, console: Console) -> int:
    """Compare Redis with the ledger key by key; print every difference; 1 if any."""
    client = sync_redis(settings)
    projector = projector_for(settings)
    now = time.time_ns() // 1000
    store = store_for(settings, client)
    layout = store.layout
    stored = store.offsets()
    data = recompute(settings, now, below=stored)
    redis_skus = set(_sku_keys(client))
    differences: list[tuple[str, str, str, Any, Any]] = []
    # Every consumed message has a ledger row, so quiet offsets agree exactly.
    for name in sorted(set(data.offsets) | set(stored)):
        if data.offsets.get(name) != stored.get(name):
            where = name.replace("\x1f", "/")
            differences.append(
                ("-", where, "next offset", data.offsets.get(name), stored.get(name))
            )
    skus = sorted(redis_skus | set(data.states))
    kits = definitions(KitRecords(client, layout).all().values())

    def expected_of(in_redis: Mapping[str, SkuState]) -> dict[str, SkuState]:
        return {
            s: msgspec.structs.replace(
                data.states.get(s) or SkuState(sku=s), safety_stock=state.safety_stock
            )
            for s, state in in_redis.items()
        }

    for i in range(0, len(skus), CHUNK):
        chunk = skus[i : i + CHUNK]
        in_redis = store_for(settings, client).read(chunk).states
        expected = expected_of(in_redis)
        # A kit's documents, from what its components' states should be.
        mine = {s: kits[s] for s in chunk if s in kits}
        components = expected_of(store_for(settings, client).read(components_of(mine)).states)
        rendered = projector.render(
            with_kits(list(expected.values()), mine, components, projector, now), now
        ).documents
        pipe = client.pipeline(transaction=False)
        for s in chunk:
            pipe.hgetall(layout.sku_key(s))
        for s, fields in zip(chunk, pipe.execute(), strict=True):
            for channel in projector.network.channels:
                want = _doc_decoder.decode(rendered[s][channel])
                raw = fields.get(projection_field(channel).encode())
                if raw is None:
                    if s in data.states:
                        differences.append((s, channel, "projection", "present", "missing"))
                    continue
                have = _doc_decoder.decode(raw)
                for attr in ("available_to_sell", "on_hand", "reserved", "safety_stock", "atp"):
                    if getattr(want, attr) != getattr(have, attr):
                        differences.append(
                            (s, channel, attr, getattr(want, attr), getattr(have, attr))
                        )
            differences += _raw_differences(
                s, data.states.get(s), in_redis[s], projector.sellable, now
            )
    if not differences:
        console.print(f"Redis matches the ledger: {len(skus)} skus, {data.events} events.")
        return 0
    table = Table(title=f"{len(differences)} difference(s) between the ledger and Redis")
    for column in ("sku", "location or channel", "field", "ledger", "redis"):
        table.add_column(column)
    for row in differences:
        table.add_row(*(str(v) for v in row))
    console.print(table)
    return 1


def _raw_differences(
    sku: str, want: SkuState | None, have: SkuState, sellable: frozenset[str], now_us: int
) -> list[tuple[str, str, str, Any, Any]]:
    def summary(state: SkuState | None) -> dict[tuple[str, str], Any]:
        out: dict[tuple[str, str], Any] = {}
        if state is None:
            return out
        for b in state.bins:
            key = (b.location, "on_hand" if b.status in sellable else f"stock[{b.status}]")
            out[key] = out.get(key, 0) + b.quantity
        for r in state.reservations:
            key = (r.location, "reserved")
            out[key] = out.get(key, 0) + r.open_quantity(now_us)
        for line in state.inbound:
            if line.quantity > 0:
                key = (line.location, f"inbound[{line.inbound_id}]")
                out[key] = (line.quantity, line.eta)
        return {k: v for k, v in out.items() if v not in (0, None)}

    a, b = summary(want), summary(have)
    return [
        (sku, location, name, a.get((location, name)), b.get((location, name)))
        for location, name in sorted(set(a) | set(b))
        if a.get((location, name)) != b.get((location, name))
    ]


def history(settings: Settings, console: Console, sku: str, location: str | None) -> int:
    connection = _connect(settings)
    if connection is None:
        console.print("the ledger is empty")
        return 0
    query = (
        "SELECT applied_at, occurred_at, type, event_id, location, channel, quantity, status, "
        "source_topic, source_partition, source_offset FROM ledger WHERE sku = ?"
    )
    params: list[Any] = [sku]
    if location:
        query += " AND location = ?"
        params.append(location)
    rows = connection.execute(query + " ORDER BY applied_at, source_offset", params).fetchall()
    table = Table(title=f"ledger of {sku}" + (f" at {location}" if location else ""))
    for column in (
        "applied_at",
        "occurred_at",
        "type",
        "event_id",
        "location",
        "channel",
        "qty",
        "status",
        "source",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(str(v) if v is not None else "" for v in row[:8]), f"{row[8]}/{row[9]}@{row[10]}"
        )
    console.print(table)
    return 0


def at_time(settings: Settings, console: Console, channel: str, sku: str, moment: datetime) -> int:
    """available_to_sell of (channel, sku) as the service would have computed it at ``moment``."""
    if settings.channel(channel) is None:
        console.print(f"unknown channel {channel!r}")
        return 2
    when = to_us(moment)
    data = recompute(settings, when, applied_until_us=when, sku=sku)
    state = data.states.get(sku) or SkuState(sku=sku)
    document = projector_for(settings).render([state], when).documents[sku][channel]
    value = _doc_decoder.decode(document)
    console.print(
        f"{channel}/{sku} at {moment.isoformat()}: available_to_sell={value.available_to_sell} "
        f"(on_hand={value.on_hand}, reserved={value.reserved}, safety_stock={value.safety_stock}; "
        f"from {data.events} ledger events)"
    )
    return 0
