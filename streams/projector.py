"""From raw sku states to the stored per-(channel, sku) documents that reads return as they are.

The arithmetic is :func:`allocation.projection.project`; this module only gathers the raw
quantities out of the states into arrays and encodes the results once per change, so a
read never aggregates and never encodes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import msgspec
import numpy as np

from allocation.kits import Figures
from allocation.network import NO_CAP, Network, Supply
from allocation.projection import NO_CHANGE, Projection, project, with_percent
from streams.state import US_PER_DAY, SkuState, from_day


class AtpEntry(msgspec.Struct, frozen=True):
    date: str
    quantity: int


class Availability(msgspec.Struct, frozen=True):
    """The single-sku read of contract section 4, stored pre-encoded per (channel, sku)."""

    channel: str
    sku: str
    available_to_sell: int
    on_hand: int
    reserved: int
    safety_stock: int
    atp: list[AtpEntry]
    as_of: str


_encoder: Final = msgspec.json.Encoder()


def format_as_of(now_us: int) -> str:
    moment = datetime.fromtimestamp(now_us // 1000 / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Rendered:
    """The projection of a set of skus, ready to store.

    Attributes:
        documents: sku -> channel -> encoded Availability.
        available_to_sell: sku -> channel -> value.
        next_change_us: sku -> when its projection changes with no event (a reservation
            expires or a day passes), absent when never.
    """

    documents: dict[str, dict[str, bytes]]
    available_to_sell: dict[str, dict[str, int]]
    next_change_us: dict[str, int]


@dataclass(frozen=True)
class Projector:
    network: Network
    sellable: frozenset[str]
    # Per channel (network order): the config file's per-sku safety stock overrides.
    config_overrides: tuple[Mapping[str, int], ...]
    # Location -> units its stock allocations may take per UTC day (contract section 11).
    capacities: Mapping[str, int] = field(default_factory=dict)

    def room(self, used: Mapping[str, int]) -> list[int] | None:
        """Per network location, what it may still give today given what it gave
        (``used``); None when no location has a capacity."""
        if not self.capacities:
            return None
        return [
            max(0, self.capacities[loc] - used.get(loc, 0)) if loc in self.capacities else NO_CAP
            for loc in self.network.locations
        ]

    def capacity_taken(self, taken: Sequence[Sequence[int]]) -> dict[str, int]:
        """Location -> units taken from stock there by these lines (per location each),
        for the locations that have a capacity."""
        if not self.capacities or not taken:
            return {}
        # Column sums in C: a batch's takes are a row per line.
        totals = [sum(column) for column in zip(*taken, strict=True)]
        return {
            name: total
            for name, total in zip(self.network.locations, totals, strict=True)
            if total and name in self.capacities
        }

    def supply(self, states: Sequence[SkuState], now_us: int) -> Supply:
        n_skus, n_locations = len(states), len(self.network.locations)
        loc = self.network.location_index()
        channel_index = {name: c for c, name in enumerate(self.network.channels)}
        stock_cells: list[int] = []
        stock_qty: list[int] = []
        held_cells: list[int] = []
        held_qty: list[int] = []
        in_sku: list[int] = []
        in_loc: list[int] = []
        in_qty: list[int] = []
        in_eta: list[int] = []
        safety = np.broadcast_to(self.network.safety_stock, (n_skus, len(channel_index))).copy()
        # Hoisted out of the loop, which runs per sku and record of every batch.
        sellable = self.sellable
        where_of = loc.get
        overridden = [
            (c, overrides) for c, overrides in enumerate(self.config_overrides) if overrides
        ]
        for s, state in enumerate(states):
            base = s * n_locations
            for b in state.bins:
                where = where_of(b.location)
                if where is not None and b.status in sellable:
                    stock_cells.append(base + where)
                    stock_qty.append(b.quantity)
            for r in state.reservations:
                held = r.open_quantity(now_us)
                if held:
                    where = where_of(r.location)
                    if where is not None:
                        held_cells.append(base + where)
                        held_qty.append(held)
            for line in state.inbound:
                where = where_of(line.location)
                if where is not None and line.quantity > 0:
                    in_sku.append(s)
                    in_loc.append(where)
                    in_qty.append(line.quantity)
                    in_eta.append(line.eta)
            for c, overrides in overridden:
                if state.sku in overrides:
                    safety[s, c] = overrides[state.sku]
            if state.safety_stock:
                for name, quantity in state.safety_stock.items():
                    c_index = channel_index.get(name)
                    if c_index is not None:
                        safety[s, c_index] = quantity
        size = n_skus * n_locations
        on_hand = _cells(stock_cells, stock_qty, size).reshape(n_skus, n_locations)
        return Supply(
            on_hand=on_hand,
            reserved=_cells(held_cells, held_qty, size).reshape(n_skus, n_locations),
            safety_stock=with_percent(safety, on_hand, self.network),
            inbound_sku=np.array(in_sku, dtype=np.int64),
            inbound_location=np.array(in_loc, dtype=np.int64),
            inbound_quantity=np.array(in_qty, dtype=np.int64),
            inbound_eta=np.array(in_eta, dtype=np.int64),
        )

    def figures(self, states: Sequence[SkuState], now_us: int) -> dict[str, Figures]:
        """Per sku, its figures per channel (what a kit's are computed from)."""
        projection = project(self.supply(states, now_us), self.network, now_us // US_PER_DAY)
        n_channels = len(self.network.channels)
        timelines: dict[int, list[list[tuple[int, int]]]] = {}
        for c, s, day, atp in _timeline_rows(projection):
            timelines.setdefault(s, [[] for _ in range(n_channels)])[c].append((day, atp))
        ats, on_hand = projection.available_to_sell.tolist(), projection.on_hand.tolist()
        empty: list[list[tuple[int, int]]] = [[] for _ in range(n_channels)]
        return {
            state.sku: Figures(ats[s], on_hand[s], timelines.get(s, empty))
            for s, state in enumerate(states)
        }

    def document(self, channel: str, sku: str, figures: Figures, c: int, now_us: int) -> bytes:
        """The read document of a kit (no reserved units, no safety stock of its own)."""
        timeline = [AtpEntry(from_day(day).isoformat(), atp) for day, atp in figures.timeline[c]]
        return _encoder.encode(
            Availability(channel, sku, figures.available_to_sell[c], figures.on_hand[c], 0, 0,
                         timeline, format_as_of(now_us))
        )  # fmt: skip

    def render(self, states: Sequence[SkuState], now_us: int) -> Rendered:
        today = now_us // US_PER_DAY
        projection = project(self.supply(states, now_us), self.network, today)
        as_of = format_as_of(now_us)
        timelines = _split_timelines(projection)
        documents: dict[str, dict[str, bytes]] = {}
        ats_out: dict[str, dict[str, int]] = {}
        next_change: dict[str, int] = {}
        ats = projection.available_to_sell.tolist()
        on_hand = projection.on_hand.tolist()
        reserved = projection.reserved.tolist()
        safety = projection.safety_stock.tolist()
        next_day = projection.next_change_day.tolist()
        channels = list(enumerate(self.network.channels))
        encode = _encoder.encode
        for s, state in enumerate(states):
            if state.kit is not None:  # its stock, if any, counts for nothing
                documents[state.sku] = dict(state.kit.documents)
                ats_out[state.sku] = dict(state.kit.available_to_sell)
                if state.kit.computed_at != now_us:
                    next_change[state.sku] = now_us  # the sweep computes it again
                continue
            sku, ats_s, on_hand_s, reserved_s, safety_s = (
                state.sku,
                ats[s],
                on_hand[s],
                reserved[s],
                safety[s],
            )
            documents[sku] = {
                name: encode(
                    Availability(name, sku, ats_s[c], on_hand_s[c], reserved_s[c], safety_s[c],
                                 timelines.get((c, s), []), as_of)
                )
                for c, name in channels
            }  # fmt: skip
            ats_out[sku] = {name: ats_s[c] for c, name in channels}
            change = _next_expiry(state, now_us)
            if next_day[s] != NO_CHANGE:
                change = min(change, next_day[s] * US_PER_DAY)
            if change != NO_CHANGE:
                next_change[state.sku] = change
        return Rendered(documents, ats_out, next_change)


def _cells(cells: list[int], quantities: list[int], size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.int64)
    if cells:
        np.add.at(out, np.array(cells, dtype=np.int64), np.array(quantities, dtype=np.int64))
    return out


def _timeline_rows(projection: Projection) -> Iterator[tuple[int, int, int, int]]:
    """(channel, sku row, day, atp) per timeline entry."""
    return zip(
        projection.timeline_channel.tolist(),
        projection.timeline_sku.tolist(),
        projection.timeline_day.tolist(),
        projection.timeline_atp.tolist(),
        strict=True,
    )


def _split_timelines(projection: Projection) -> dict[tuple[int, int], list[AtpEntry]]:
    out: dict[tuple[int, int], list[AtpEntry]] = {}
    dates: dict[int, str] = {}
    for c, s, day, atp in _timeline_rows(projection):
        text = dates.get(day)
        if text is None:
            text = dates[day] = from_day(day).isoformat()
        out.setdefault((c, s), []).append(AtpEntry(text, atp))
    return out


def _next_expiry(state: SkuState, now_us: int) -> int:
    soonest = int(NO_CHANGE)
    for r in state.reservations:
        if r.expires_at > now_us and r.open_quantity(now_us):
            soonest = min(soonest, r.expires_at)
    return soonest
