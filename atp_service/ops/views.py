"""The control tower's figures, pure: raw stored values into a Summary and a SkuView.

Definitions (per channel, from the stored projection documents, i.e. what reads serve):

- at zero: ``net = on_hand - reserved <= 0``;
- under safety stock: ``0 < net <= safety_stock`` (so ``available_to_sell == 0`` only
  because the safety stock holds the units back).

Reservations carry no creation time (only ``expires_at`` and ``closed_at``), so their age is
unknown: the "oldest open reservations" are listed by ``expires_at`` ascending (with uniform
reservation lifetimes that is creation order), and the ones that never expire come last.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import msgspec

from allocation.kits import KitDefinition
from atp_service.config import ChannelSettings, Settings
from atp_service.store import keys
from streams.projector import Availability, format_as_of
from streams.snapshot import ConsumerSnapshot
from streams.state import SkuState, from_day, load_state

EXAMPLES: Final = 5
OLDEST: Final = 20
MAX_KITS: Final = 200  # kits listed in the summary
STALE_SNAPSHOT_S: Final = 10.0  # consumers write theirs every second
_NEVER: Final = 2**63 - 1

_document: Final = msgspec.json.Decoder(Availability)


# -- the figures -------------------------------------------------------------------------


class ChannelFigures(msgspec.Struct, frozen=True):
    channel: str
    skus: int  # skus with a projection document on this channel
    at_zero: int
    at_zero_examples: list[str]
    under_safety_stock: int
    under_safety_stock_examples: list[str]
    # The channel's buffers and caps (contract section 11), as configured; "" when none.
    buffers: str = ""


class PartitionLag(msgspec.Struct, frozen=True):
    partition: str  # "topic/partition"
    lag: int


class ConsumerView(msgspec.Struct, frozen=True):
    instance: str
    age_s: float  # since the consumer last wrote its snapshot
    stale: bool
    lag: int
    visible_p50_ms: float | None
    visible_p99_ms: float | None
    consumed: int
    applied: int
    duplicates: int
    dead_lettered: int


class DeadLetterReason(msgspec.Struct, frozen=True):
    reason: str
    count: int


class OpenReservation(msgspec.Struct, frozen=True):
    reservation_id: str
    sku: str
    channel: str
    location: str
    quantity: int  # still held (created minus consumed)
    expires_at: str | None  # None: never expires


class KitSummary(msgspec.Struct, frozen=True):
    sku: str
    components: str  # "2 x MUG-1 + 1 x TRAY-1"
    available_to_sell: dict[str, int]  # per channel; {} when the scan did not reach it


class CapacityView(msgspec.Struct, frozen=True):
    """A location's daily capacity (contract section 11) and what today took of it."""

    name: str
    daily_capacity_units: int
    allocated_today: int  # stock units allocations took there this UTC day
    remaining_today: int


class Summary(msgspec.Struct, frozen=True):
    generated_at: str
    skus_scanned: int
    truncated: bool  # more than max_skus skus: the counts cover the first max_skus only
    channels: list[ChannelFigures]
    consumers: list[ConsumerView]
    lag_total: int | None  # None: no consumer reported
    lag: list[PartitionLag]
    # The worst of the live consumers' own percentiles (percentiles do not add up).
    visible_p50_ms: float | None
    visible_p99_ms: float | None
    dead_letters_last_hour: int
    dead_letters_by_reason: list[DeadLetterReason]
    open_reservations: int
    oldest_open_reservations: list[OpenReservation]
    kits: list[KitSummary] = []
    locations: list[CapacityView] = []


class InboundView(msgspec.Struct, frozen=True):
    inbound_id: str
    location: str
    quantity: int
    eta: str  # ISO date


class LocationView(msgspec.Struct, frozen=True):
    location: str
    on_hand: int  # in sellable statuses
    other: dict[str, int]  # status -> quantity, for the statuses that are not sellable
    reserved: int  # open reservations held at this location
    inbound: int  # open inbound quantity due here


class ChannelAvailability(msgspec.Struct, frozen=True):
    channel: str
    available_to_sell: int
    on_hand: int
    reserved: int
    safety_stock: int
    as_of: str | None  # None: no projection stored yet (a sku never seen reads 0)


class SkuView(msgspec.Struct, frozen=True):
    sku: str
    known: bool  # the sku has a stored state
    locations: list[LocationView]
    inbound: list[InboundView]
    channels: list[ChannelAvailability]
    reservations: list[OpenReservation]
    components: str | None = None  # a kit's, as in KitSummary


# -- pure: raw values -> figures ---------------------------------------------------------


sku_of = keys.sku_of


def open_reservations(state: SkuState, now_us: int) -> list[tuple[int, OpenReservation]]:
    """The sku's open reservations, each with its sort key (``expires_at``, never last)."""
    out: list[tuple[int, OpenReservation]] = []
    for r in state.reservations:
        held = r.open_quantity(now_us)
        if held <= 0:
            continue
        expires = format_as_of(r.expires_at) if r.expires_at else None
        out.append(
            (
                r.expires_at or _NEVER,
                OpenReservation(r.reservation_id, state.sku, r.channel, r.location, held, expires),
            )
        )
    return out


class Row(msgspec.Struct, frozen=True):
    """One scanned sku: its raw state and its projection document per channel."""

    sku: str
    state: bytes | None
    documents: dict[str, bytes]


def buffers_text(channel: ChannelSettings) -> str:
    """What a channel holds back or caps, in a few words: "20% of on hand, min 2, max 40"."""
    parts = []
    if channel.safety_stock_percent:
        parts.append(f"{channel.safety_stock_percent}% of on hand")
    if channel.min_available:
        parts.append(f"min {channel.min_available}")
    if channel.max_available is not None:
        parts.append(f"max {channel.max_available}")
    if channel.max_order_quantity is not None:
        parts.append(f"order cap {channel.max_order_quantity}")
    if channel.low_stock_threshold:
        parts.append(f"low at {channel.low_stock_threshold}")
    return ", ".join(parts)


def kit_text(kit: KitDefinition) -> str:
    return " + ".join(f"{c.quantity} x {c.sku}" for c in kit.components)


def capacity_views(settings: Settings, used: Mapping[str, int]) -> list[CapacityView]:
    """Each configured location's capacity and what today's allocations took (``used``)."""
    return [
        CapacityView(
            name=loc.name,
            daily_capacity_units=loc.daily_capacity_units,
            allocated_today=used.get(loc.name, 0),
            remaining_today=max(0, loc.daily_capacity_units - used.get(loc.name, 0)),
        )
        for loc in settings.capacities
    ]


def summarize(
    settings: Settings,
    rows: Iterable[Row],
    snapshots: Sequence[ConsumerSnapshot],
    now_s: float,
    truncated: bool = False,
    kits: Mapping[str, KitDefinition] | None = None,
    used: Mapping[str, int] | None = None,
) -> Summary:
    """``kits``: the kits in force; ``used``: units taken today per location."""
    now_us = int(now_s * 1_000_000)
    kits = kits or {}
    kit_values: dict[str, dict[str, int]] = {}
    names = [c.name for c in settings.channels]
    counts = {name: [0, 0, 0] for name in names}  # skus, at zero, under safety stock
    zero: dict[str, list[str]] = {name: [] for name in names}
    under: dict[str, list[str]] = {name: [] for name in names}
    held: list[tuple[int, str, str, OpenReservation]] = []
    n_open = 0
    scanned = 0
    for row in rows:
        scanned += 1
        for name in names:
            raw = row.documents.get(name)
            if raw is None:
                continue
            doc = _document.decode(raw)
            if row.sku in kits:
                kit_values.setdefault(row.sku, {})[name] = doc.available_to_sell
            net = doc.on_hand - doc.reserved
            figures = counts[name]
            figures[0] += 1
            if net <= 0:
                figures[1] += 1
                zero[name].append(row.sku)
            elif doc.available_to_sell == 0:
                figures[2] += 1
                under[name].append(row.sku)
        if row.state:
            found = open_reservations(load_state(row.sku, row.state), now_us)
            n_open += len(found)
            held.extend((order, r.sku, r.reservation_id, r) for order, r in found)
            if len(held) > 50 * OLDEST:
                held = heapq.nsmallest(OLDEST, held, key=_age_order)
    oldest = sorted(held, key=_age_order)[:OLDEST]
    channels = [
        ChannelFigures(
            channel=name,
            skus=counts[name][0],
            at_zero=counts[name][1],
            at_zero_examples=heapq.nsmallest(EXAMPLES, zero[name]),
            under_safety_stock=counts[name][2],
            under_safety_stock_examples=heapq.nsmallest(EXAMPLES, under[name]),
            buffers=buffers_text(channel),
        )
        for name, channel in zip(names, settings.channels, strict=True)
    ]
    live = _consumer_figures(snapshots, now_s)
    return Summary(
        generated_at=format_as_of(now_us),
        skus_scanned=scanned,
        truncated=truncated,
        channels=channels,
        oldest_open_reservations=[e[3] for e in oldest],
        open_reservations=n_open,
        consumers=live.consumers,
        lag_total=live.lag_total,
        lag=live.lag,
        visible_p50_ms=live.visible_p50_ms,
        visible_p99_ms=live.visible_p99_ms,
        dead_letters_last_hour=live.dead_letters_last_hour,
        dead_letters_by_reason=live.dead_letters_by_reason,
        kits=[
            KitSummary(sku, kit_text(kit), kit_values.get(sku, {}))
            for sku, kit in sorted(kits.items())[:MAX_KITS]
        ],
        locations=capacity_views(settings, used or {}),
    )


def _age_order(entry: tuple[int, str, str, OpenReservation]) -> tuple[int, str, str]:
    return entry[0], entry[1], entry[2]


class _Live(msgspec.Struct, frozen=True):
    consumers: list[ConsumerView]
    lag_total: int | None
    lag: list[PartitionLag]
    visible_p50_ms: float | None
    visible_p99_ms: float | None
    dead_letters_last_hour: int
    dead_letters_by_reason: list[DeadLetterReason]


def _consumer_figures(snapshots: Sequence[ConsumerSnapshot], now_s: float) -> _Live:
    consumers: list[ConsumerView] = []
    # During a rebalance two instances may both report a partition: the freshest one wins.
    lag: dict[str, tuple[float, int]] = {}
    dead: Counter[str] = Counter()
    p50: list[float] = []
    p99: list[float] = []
    for snap in sorted(snapshots, key=lambda s: s.instance):
        age = max(0.0, now_s - snap.updated_at)
        consumers.append(
            ConsumerView(
                instance=snap.instance,
                age_s=round(age, 1),
                stale=age > STALE_SNAPSHOT_S,
                lag=sum(snap.lag.values()),
                visible_p50_ms=snap.visible_p50_ms,
                visible_p99_ms=snap.visible_p99_ms,
                consumed=snap.consumed,
                applied=snap.applied,
                duplicates=snap.duplicates,
                dead_lettered=snap.dead_lettered,
            )
        )
        for partition, behind in snap.lag.items():
            if partition not in lag or lag[partition][0] < snap.updated_at:
                lag[partition] = (snap.updated_at, behind)
        dead.update(snap.dead_letters_last_hour)
        if snap.visible_p50_ms is not None:
            p50.append(snap.visible_p50_ms)
        if snap.visible_p99_ms is not None:
            p99.append(snap.visible_p99_ms)
    return _Live(
        consumers=consumers,
        lag_total=sum(v for _, v in lag.values()) if snapshots else None,
        lag=[PartitionLag(p, lag[p][1]) for p in sorted(lag, key=_partition_order)],
        visible_p50_ms=max(p50) if p50 else None,
        visible_p99_ms=max(p99) if p99 else None,
        dead_letters_last_hour=sum(dead.values()),
        dead_letters_by_reason=[
            DeadLetterReason(reason, n)
            for reason, n in sorted(dead.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    )


def _partition_order(name: str) -> tuple[str, int]:
    topic, _, partition = name.rpartition("/")
    return (topic, int(partition)) if partition.isdigit() else (name, -1)


def sku_view(
    settings: Settings,
    sku: str,
    state_raw: bytes | None,
    documents: Mapping[str, bytes | None],
    now_s: float,
    kit: KitDefinition | None = None,
) -> SkuView:
    now_us = int(now_s * 1_000_000)
    state = load_state(sku, state_raw)
    sellable = frozenset(settings.statuses.sellable)
    locations = list(settings.locations)
    seen = set(locations)

    def place(location: str) -> None:
        if location not in seen:
            seen.add(location)
            locations.append(location)

    on_hand: Counter[str] = Counter()
    other: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for b in state.bins:
        place(b.location)
        if b.status in sellable:
            on_hand[b.location] += b.quantity
        else:
            other[b.location][b.status] += b.quantity
    found = [r for _, r in sorted(open_reservations(state, now_us), key=lambda e: e[0])]
    reserved: Counter[str] = Counter()
    for r in found:
        place(r.location)
        reserved[r.location] += r.quantity
    inbound = [
        InboundView(i.inbound_id, i.location, i.quantity, from_day(i.eta).isoformat())
        for i in sorted(state.inbound, key=lambda i: (i.eta, i.location, i.inbound_id))
        if i.quantity > 0
    ]
    due: Counter[str] = Counter()
    for line in inbound:
        place(line.location)
        due[line.location] += line.quantity
    channels: list[ChannelAvailability] = []
    for channel in settings.channels:
        raw = documents.get(channel.name)
        if raw is None:
            safety = state.safety_stock.get(
                channel.name, channel.safety_stock_overrides.get(sku, channel.safety_stock)
            )
            channels.append(ChannelAvailability(channel.name, 0, 0, 0, safety, None))
            continue
        doc = _document.decode(raw)
        channels.append(
            ChannelAvailability(
                channel.name, doc.available_to_sell, doc.on_hand, doc.reserved,
                doc.safety_stock, doc.as_of,
            )
        )  # fmt: skip
    return SkuView(
        sku=sku,
        known=state_raw is not None,
        locations=[
            LocationView(
                location=loc,
                on_hand=on_hand[loc],
                other=dict(sorted(other[loc].items())),
                reserved=reserved[loc],
                inbound=due[loc],
            )
            for loc in locations
        ],
        inbound=inbound,
        channels=channels,
        reservations=found,
        components=kit_text(kit) if kit is not None else None,
    )
