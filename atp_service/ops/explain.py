"""Why a channel shows the value it shows (contract section 13): the figures behind a read.

Pure: a sku's raw state and the Projector in, the explanation out. The figures are those
the projection is made of (``Projector.supply`` and ``allocation.projection``), per location.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import msgspec

from allocation.in_turn import preferred
from allocation.network import NO_CAP, Network
from streams.projector import Availability, Projector
from streams.state import US_PER_DAY, SkuState, from_day, from_us

Source = Literal["channel", "config_override", "api_override", "percent"]


class LocationFigures(msgspec.Struct, frozen=True):
    location: str
    on_hand: int  # sellable units
    reserved: int  # open reservations
    by_status: dict[str, int]  # every status held there, sellable or not


class SafetyStockApplied(msgspec.Struct, frozen=True):
    value: int
    source: Source


class Buffers(msgspec.Struct, frozen=True):
    min_available: int
    max_available: int | None


class InboundCounted(msgspec.Struct, frozen=True):
    inbound_id: str
    location: str
    eta: str
    quantity: int


class ComponentFigures(msgspec.Struct, frozen=True):
    """A kit's component, with its own read on the channel (contract section 10)."""

    sku: str
    quantity: int  # per kit
    available_to_sell: int
    on_hand: int
    kits: int  # floor(available_to_sell / quantity): the kit's value is the least of these


class RecentEvent(msgspec.Struct, frozen=True):
    event_id: str
    type: str
    occurred_at: str


class Explanation(msgspec.Struct, frozen=True):
    locations: list[LocationFigures]
    safety_stock: SafetyStockApplied
    buffers: Buffers
    inbound: list[InboundCounted]
    components: list[ComponentFigures] | None  # None: not a kit
    recent_events: list[RecentEvent]


class ExplainedAvailability(Availability, frozen=True):
    """The read's object (``GET /v1/availability/{channel}/{sku}``) with its explanation."""

    explain: Explanation


def explain(
    state: SkuState,
    channel: str,
    projector: Projector,
    now_us: int,
    components: list[ComponentFigures] | None = None,
) -> Explanation:
    network = projector.network
    c = network.channel_index(channel)
    if components is not None:  # a kit: its components hold the stock (contract section 10)
        return Explanation(
            locations=[],
            safety_stock=SafetyStockApplied(0, "channel"),
            buffers=_buffers(network, c),
            inbound=[],
            components=components,
            recent_events=_recent(state),
        )
    locations = [network.locations[loc] for loc in preferred(network)[c]]
    on_hand: dict[str, int] = defaultdict(int)
    by_status: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for b in state.bins:
        by_status[b.location][b.status] += b.quantity
        if b.status in projector.sellable:
            on_hand[b.location] += b.quantity
    reserved: dict[str, int] = defaultdict(int)
    for r in state.reservations:
        reserved[r.location] += r.open_quantity(now_us)
    today = now_us // US_PER_DAY
    horizon_end = today + int(network.horizon[c])
    safety = int(projector.supply([state], now_us).safety_stock[0, c])
    return Explanation(
        locations=[
            LocationFigures(loc, on_hand[loc], reserved[loc], dict(by_status[loc]))
            for loc in locations
        ],
        safety_stock=SafetyStockApplied(safety, _source(state, channel, c, projector, safety)),
        buffers=_buffers(network, c),
        inbound=[
            InboundCounted(i.inbound_id, i.location, from_day(i.eta).isoformat(), i.quantity)
            for i in sorted(state.inbound, key=lambda i: (i.eta, i.inbound_id))
            if i.quantity > 0 and i.location in locations and i.eta <= horizon_end
        ],
        components=components,
        recent_events=_recent(state),
    )


def _buffers(network: Network, c: int) -> Buffers:
    high = network.max_available[c]
    return Buffers(int(network.min_available[c]), None if high == NO_CAP else int(high))


def _recent(state: SkuState) -> list[RecentEvent]:
    return [
        RecentEvent(e.event_id, e.type, from_us(e.occurred_at).isoformat().replace("+00:00", "Z"))
        for e in reversed(state.recent)
    ]


def _source(state: SkuState, channel: str, c: int, projector: Projector, applied: int) -> Source:
    """Where the applied safety stock comes from: an override set over HTTP wins over the
    config file's, which wins over the channel's; the percent wins when it is higher."""
    if channel in state.safety_stock:
        source: Source = "api_override"
        base = state.safety_stock[channel]
    elif state.sku in projector.config_overrides[c]:
        source = "config_override"
        base = projector.config_overrides[c][state.sku]
    else:
        source = "channel"
        base = int(projector.network.safety_stock[c])
    return "percent" if applied > base else source
