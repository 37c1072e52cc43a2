"""Allocation requests and results (contract section 4), and the pure step that turns an
:class:`allocation.allocate.Allocation` into reservations and order results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
import numpy as np

from allocation.allocate import NONE, Allocation, allocate
from allocation.network import Network
from atp_service.config import MAX_BATCH_ORDERS, MAX_LINE_QUANTITY, MAX_LINES_PER_ORDER
from streams.events import Sku
from streams.projector import Projector
from streams.state import US_PER_DAY, Reservation, SkuState, from_day

LineId = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f:]+$")]


ORDER_ID_PATTERN: Final = r"^[^\x00-\x1f\x7f/:]+$"
OrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=150, pattern=ORDER_ID_PATTERN)]


# Request bodies refuse unknown fields (a misspelt "backorder" must not pass unnoticed);
# events ignore them, for forward compatibility (contract section 2).
class OrderLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    line_id: LineId
    sku: Sku
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_LINE_QUANTITY)]


class OrderRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    order_id: OrderId
    channel: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    lines: Annotated[
        list[OrderLine],
        msgspec.Meta(
            min_length=1,
            max_length=MAX_LINES_PER_ORDER,
            description="line_ids are unique within the order",
        ),
    ]
    backorder: bool = False


class BatchRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    orders: Annotated[
        list[OrderRequest],
        msgspec.Meta(
            min_length=1,
            max_length=MAX_BATCH_ORDERS,
            description="order_ids are unique within the batch",
        ),
    ]


class LineAllocation(msgspec.Struct, frozen=True):
    location: str
    quantity: int
    reservation_id: str


class LineResult(msgspec.Struct, frozen=True):
    line_id: str
    sku: str
    quantity: int
    allocations: list[LineAllocation]
    backordered: int
    promise_date: str | None
    unfilled: int


class OrderResult(msgspec.Struct, frozen=True):
    order_id: str
    channel: str
    status: Literal["allocated", "released"]
    lines: list[LineResult]


class BatchResult(msgspec.Struct, frozen=True):
    orders: list[OrderResult]


class Held(msgspec.Struct, frozen=True, array_like=True):
    """One reservation the API made for an order."""

    sku: str
    reservation_id: str
    location: str
    quantity: int


class StoredOrder(msgspec.Struct, frozen=True):
    fingerprint: str
    result: OrderResult
    held: list[Held]


_encoder: Final = msgspec.json.Encoder()
_stored_decoder: Final = msgspec.json.Decoder(StoredOrder)


def fingerprint(order: OrderRequest) -> str:
    return hashlib.sha256(_encoder.encode(order)).hexdigest()


def encode_stored(order: StoredOrder) -> bytes:
    return _encoder.encode(order)


def decode_stored(payload: bytes) -> StoredOrder:
    return _stored_decoder.decode(payload)


def created_event_id(reservation_id: str) -> str:
    """Deterministic, so the consumer recognises the API's own reservations as applied."""
    return f"atp-alloc:{reservation_id}"


def released_event_id(reservation_id: str) -> str:
    return f"atp-release:{reservation_id}"


@dataclass(frozen=True)
class Planned:
    """The outcome of allocating orders against a snapshot, ready to write."""

    states: list[SkuState]
    results: list[OrderResult]
    held: list[list[Held]]
    event_ids: dict[str, list[str]]  # sku -> event_ids of the reservations made


def plan(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    projector: Projector,
    now_us: int,
    *,
    scalar: bool | None = None,
) -> Planned:
    """Allocate ``orders`` together and derive the new sku states.

    A batch goes through the vectorized engine in one call. A single order (the common
    ``POST /v1/allocations``) takes a plain-Python path by default: the same rules, line by
    line, without the engine's fixed per-call cost; ``scalar`` forces either path for a
    single order (the tests hold the two equal).
    """
    lines = None
    if len(orders) == 1 and (scalar is None or scalar):
        lines = _allocate_in_turn(orders, states, projector, now_us)
    if lines is None:
        lines = _allocate_vectorized(orders, states, projector, now_us)
    return _assemble(orders, states, projector.network, lines)


def plan_in_turn(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    projector: Projector,
    now_us: int,
) -> Planned:
    """Allocate independent orders one after another, in the order given: each exactly as
    ``plan([order])`` would on the states the orders before it left (not as one batch, whose
    lines go by channel priority). For concurrent single-order requests written together.
    """
    lines = _allocate_in_turn(orders, states, projector, now_us)
    if lines is None:  # input the engine refuses
        if len(orders) != 1:
            raise ValueError(
                "an order the allocation engine refuses (plan each alone to see which)"
            )
        lines = _allocate_vectorized(orders, states, projector, now_us)  # raises the engine's error
    return _assemble(orders, states, projector.network, lines)


@dataclass(frozen=True)
class _Lines:
    """Per line, in the order given: what the engine decided."""

    taken: list[list[int]]  # units from stock, per network location
    backordered: list[int]
    promise_day: list[int]
    promise_location: list[int]
    unfilled: list[int]


def _allocate_vectorized(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    projector: Projector,
    now_us: int,
) -> _Lines:
    network: Network = projector.network
    skus = list(states)
    row = {sku: i for i, sku in enumerate(skus)}
    lines = [(o, line) for o in orders for line in o.lines]
    channel_index = {name: c for c, name in enumerate(network.channels)}
    ordered = [states[sku] for sku in skus]
    outcome: Allocation = allocate(
        projector.supply(ordered, now_us),
        network,
        now_us // US_PER_DAY,
        np.array([channel_index[o.channel] for o, _ in lines], dtype=np.int64),
        np.array([row[line.sku] for _, line in lines], dtype=np.int64),
        np.array([line.quantity for _, line in lines], dtype=np.int64),
        np.array([o.backorder for o, _ in lines], dtype=np.bool_),
    )
    return _Lines(
        taken=outcome.taken.tolist(),
        backordered=outcome.backordered.tolist(),
        promise_day=outcome.promise_day.tolist(),
        promise_location=outcome.promise_location.tolist(),
        unfilled=outcome.unfilled.tolist(),
    )


def _allocate_in_turn(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    projector: Projector,
    now_us: int,
) -> _Lines | None:
    """The rules of ``allocation.allocate`` as plain loops over a sku's few locations, one
    order after another and, within an order (one channel, so one priority), line by line
    as given: for a single order exactly what the engine computes.

    Supply is gathered from the states exactly as ``Projector.supply`` does. None when the
    input is one the engine refuses (it then raises the engine's error).
    """
    network = projector.network
    n_locations = len(network.locations)
    today = now_us // US_PER_DAY
    books: dict[str, _SkuSupply] = {}
    out = _Lines([], [], [], [], [])
    for order in orders:
        if order.channel not in network.channels:
            return None
        c = network.channels.index(order.channel)
        for line in order.lines:
            book = books.get(line.sku)
            if book is None:
                book = _SkuSupply.of(projector, states[line.sku], now_us)
                if book is None:
                    return None
                books[line.sku] = book
            quantity = line.quantity
            if quantity < 1:
                return None
            preferred, safety, due = book.channel(c, today)
            unreserved = book.unreserved
            net = sum(unreserved[loc] for loc in preferred)
            take = min(quantity, max(0, net - safety))
            taken = [0] * n_locations
            if take > 0:
                whole = next((loc for loc in preferred if unreserved[loc] >= take), None)
                if whole is not None:
                    taken[whole] = take
                else:
                    remaining = take
                    for loc in preferred:
                        part = min(max(0, unreserved[loc]), remaining)
                        taken[loc] = part
                        remaining -= part
                for loc in preferred:
                    unreserved[loc] -= taken[loc]
            rest = quantity - take
            backordered, day, where = 0, NONE, NONE
            if order.backorder and rest > 0 and due:
                # atp(c,s,d) after the take = max(0, net - take + inbound due by d - safety).
                head = net - take - safety
                backordered = min(rest, max(0, head + due[-1][1]))
                if backordered > 0:
                    day, where = next(
                        (d, loc) for d, total, loc in due if head + total >= backordered
                    )
                    unreserved[where] -= backordered
            out.taken.append(taken)
            out.backordered.append(backordered)
            out.promise_day.append(day)
            out.promise_location.append(where)
            out.unfilled.append(rest - backordered)
    return out


class _SkuSupply:
    """One sku's supply as the plain-Python path reads it (see ``Projector.supply``).

    ``unreserved`` is on_hand - reserved per network location, updated as lines reserve;
    ``channel(c)`` gives the channel's locations in preference order, its effective safety
    stock and its inbound timeline: (day, inbound due by that day, preferred location with
    a line due that day) per distinct due day within the channel's horizon, ascending.
    """

    def __init__(self, projector: Projector, state: SkuState, unreserved: list[int]) -> None:
        self.projector = projector
        self.state = state
        self.unreserved = unreserved
        self._channels: dict[int, tuple[list[int], int, list[tuple[int, int, int]]]] = {}

    @classmethod
    def of(cls, projector: Projector, state: SkuState, now_us: int) -> _SkuSupply | None:
        network = projector.network
        index = network.location_index()
        unreserved = [0] * len(network.locations)
        for b in state.bins:
            where = index.get(b.location)
            if where is not None and b.status in projector.sellable:
                unreserved[where] += b.quantity
        for r in state.reservations:
            where = index.get(r.location)
            if where is not None:
                unreserved[where] -= r.open_quantity(now_us)
        # The engine refuses a negative safety stock of any channel of the sku.
        if any(o.get(state.sku, 0) < 0 for o in projector.config_overrides if o) or any(
            q < 0 for name, q in state.safety_stock.items() if name in network.channels
        ):
            return None
        if (network.safety_stock < 0).any():
            return None
        return cls(projector, state, unreserved)

    def channel(self, c: int, today: int) -> tuple[list[int], int, list[tuple[int, int, int]]]:
        found = self._channels.get(c)
        if found is None:
            found = self._channels[c] = self._channel(c, today)
        return found

    def _channel(self, c: int, today: int) -> tuple[list[int], int, list[tuple[int, int, int]]]:
        network, state = self.projector.network, self.state
        rank: list[int] = network.rank[c].tolist()
        preferred = [loc for _, loc in sorted((r, loc) for loc, r in enumerate(rank) if r >= 0)]
        safety = int(network.safety_stock[c])
        overrides = self.projector.config_overrides[c]
        if overrides and state.sku in overrides:
            safety = overrides[state.sku]
        safety = state.safety_stock.get(network.channels[c], safety)
        index = network.location_index()
        position = {loc: p for p, loc in enumerate(preferred)}
        horizon_end = today + int(network.horizon[c])
        lines = sorted(
            (max(line.eta, today), position[where], where, line.quantity)
            for line in state.inbound
            if (where := index.get(line.location)) is not None
            and where in position
            and line.quantity > 0
            and line.eta <= horizon_end
        )
        due: list[tuple[int, int, int]] = []
        total = 0
        for day, _, where, quantity in lines:
            total += quantity
            if due and due[-1][0] == day:
                due[-1] = (day, total, due[-1][2])
            else:
                due.append((day, total, where))
        return preferred, safety, due


def _assemble(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    network: Network,
    outcome: _Lines,
) -> Planned:
    """Reservations, order results and new sku states out of the per-line outcome."""
    taken = outcome.taken
    backordered = outcome.backordered
    promise_day = outcome.promise_day
    promise_location = outcome.promise_location
    unfilled = outcome.unfilled
    book = _Book(states)
    results: list[OrderResult] = []
    held_per_order: list[list[Held]] = []
    i = 0
    for order in orders:
        line_results: list[LineResult] = []
        held: list[Held] = []
        for line in order.lines:
            taken_here: list[LineAllocation] = []

            for l_index, quantity in enumerate(taken[i]):
                if quantity:
                    location = network.locations[l_index]
                    reservation_id = book.reserve(order, line, location, quantity, "", held)
                    taken_here.append(LineAllocation(location, quantity, reservation_id))
            promise: str | None = None
            if backordered[i]:
                location = network.locations[promise_location[i]]
                book.reserve(order, line, location, backordered[i], ":backorder", held)
                promise = from_day(promise_day[i]).isoformat() if promise_day[i] != NONE else None
            line_results.append(
                LineResult(
                    line_id=line.line_id,
                    sku=line.sku,
                    quantity=line.quantity,
                    allocations=taken_here,
                    backordered=backordered[i],
                    promise_date=promise,
                    unfilled=unfilled[i],
                )
            )
            i += 1
        results.append(OrderResult(order.order_id, order.channel, "allocated", line_results))
        held_per_order.append(held)
    new_states = [
        msgspec.structs.replace(
            states[sku], reservations=(*states[sku].reservations, *book.new[sku])
        )
        for sku in states
        if book.new[sku]
    ]
    return Planned(new_states, results, held_per_order, book.event_ids)


class _Book:
    """The reservations a plan makes, with ids unique within each sku's state."""

    def __init__(self, states: dict[str, SkuState]) -> None:
        self.existing = {
            sku: {r.reservation_id for r in st.reservations} for sku, st in states.items()
        }
        self.new: dict[str, list[Reservation]] = {sku: [] for sku in states}
        self.event_ids: dict[str, list[str]] = {}

    def reserve(
        self,
        order: OrderRequest,
        line: OrderLine,
        location: str,
        quantity: int,
        suffix: str,
        held: list[Held],
    ) -> str:
        base = f"{order.order_id}:{line.line_id}:{location}{suffix}"
        reservation_id, attempt = base, 1
        # An id left by an earlier attempt that was undone is not reused.
        while reservation_id in self.existing[line.sku]:
            attempt += 1
            reservation_id = f"{base}#{attempt}"
        self.existing[line.sku].add(reservation_id)
        self.new[line.sku].append(
            Reservation(reservation_id, True, order.channel, location, quantity)
        )
        self.event_ids.setdefault(line.sku, []).append(created_event_id(reservation_id))
        held.append(Held(line.sku, reservation_id, location, quantity))
        return reservation_id


def release(state: SkuState, reservation_ids: set[str], now_us: int) -> SkuState:
    """Release the named reservations of one sku (already released ones stay as they are)."""
    reservations = tuple(
        msgspec.structs.replace(r, released=True, closed_at=r.closed_at or now_us)
        if r.reservation_id in reservation_ids and not r.released
        else r
        for r in state.reservations
    )
    return msgspec.structs.replace(state, reservations=reservations)
