"""Allocation requests and results (contract section 4), and the pure step that turns an
:class:`allocation.allocate.Allocation` into reservations and order results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
import numpy as np

from allocation.allocate import NONE, Allocation, allocate
from allocation.in_turn import KitLine, Line, Outcomes, allocate_in_turn
from allocation.kits import KitDefinition
from allocation.network import Network
from atp_service.config import MAX_BATCH_ORDERS, MAX_LINE_QUANTITY, MAX_LINES_PER_ORDER
from streams.backorders import (
    BACKORDER,
    created_event_id,
    read_line_record,
    released_event_id,
)
from streams.events import TAGS, ReservationCreated, ReservationReleased, Sku
from streams.projector import Projector
from streams.state import (
    NO_PROMISE,
    RECENT_TYPES,
    US_PER_DAY,
    Recent,
    Reservation,
    SkuState,
    from_day,
    with_recent,
)

CREATED: Final = RECENT_TYPES.index(TAGS[ReservationCreated])
RELEASED: Final = RECENT_TYPES.index(TAGS[ReservationReleased])

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


class LineResult(msgspec.Struct, frozen=True, omit_defaults=True):
    line_id: str
    sku: str
    quantity: int
    allocations: list[LineAllocation]
    backordered: int
    promise_date: str | None
    unfilled: int
    # A kit's line: what each component's line took (contract section 10). Absent otherwise.
    components: list[LineResult] | None = None


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
    # A backorder's: when the order was allocated (0: not a backorder) and the promise.
    placed_at: int = 0
    promise_day: int = NO_PROMISE


class StoredOrder(msgspec.Struct, frozen=True):
    fingerprint: str
    result: OrderResult
    held: list[Held]
    # The write that made the record (random, per attempt): a request whose write's reply
    # was lost finds its own record by it, and publishes it (atp_service/allocator.py).
    attempt: str = ""


_encoder: Final = msgspec.json.Encoder()
_stored_decoder: Final = msgspec.json.Decoder(StoredOrder)


def fingerprint(order: OrderRequest) -> str:
    return hashlib.sha256(_encoder.encode(order)).hexdigest()


def encode_stored(order: StoredOrder) -> bytes:
    return _encoder.encode(order)


def decode_stored(payload: bytes) -> StoredOrder:
    return _stored_decoder.decode(payload)


def encode_result(result: OrderResult) -> bytes:
    return _encoder.encode(result)


@dataclass(frozen=True)
class Planned:
    """The outcome of allocating orders against a snapshot, ready to write."""

    states: list[SkuState]
    results: list[OrderResult]
    held: list[list[Held]]
    event_ids: dict[str, list[str]]  # sku -> event_ids of the reservations made
    taken: list[list[int]]  # per line: units taken from stock per network location


def plan(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    projector: Projector,
    now_us: int,
    *,
    scalar: bool | None = None,
    kits: Mapping[str, KitDefinition] | None = None,
    room: Sequence[int] | None = None,
) -> Planned:
    """Allocate ``orders`` together and derive the new sku states.

    A batch goes through the vectorized engine in one call. A single order (the common
    ``POST /v1/allocations``) takes a plain-Python path by default: the same rules, line by
    line, without the engine's fixed per-call cost; ``scalar`` forces either path for a
    single order (the tests hold the two equal). Orders with a line for one of ``kits``
    (whose components ``states`` must hold) take the plain path, a batch's lines by channel
    priority as the engine takes them. ``room`` (``Projector.room``) is what each location
    may still give today: a batch is allocated by the engine first, and again on the plain
    path only if it took more than some location may give (else no line met the limit, and
    the plain path would give the same).
    """
    kits = kits or {}
    lines = None
    if any(line.sku in kits for order in orders for line in order.lines):
        lines = _lines_in_turn(orders, states, projector, now_us, kits, True, room)
        if lines is None:
            raise ValueError("an order line the allocation refuses")
    elif len(orders) == 1 and (scalar is None or scalar):
        lines = _lines_in_turn(orders, states, projector, now_us, room=room)
    if lines is None:
        lines = _allocate_vectorized(orders, states, projector, now_us)
        if room is not None and not fits_room(lines.totals or [], room):
            lines = _lines_in_turn(orders, states, projector, now_us, kits, True, room)
            if lines is None:  # the engine took the same input: cannot happen
                raise ValueError("an order line the allocation refuses")
    return _assemble(orders, states, projector.network, lines, now_us, kits)


def plan_in_turn(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    projector: Projector,
    now_us: int,
    kits: Mapping[str, KitDefinition] | None = None,
    room: Sequence[int] | None = None,
) -> Planned:
    """Allocate independent orders one after another, in the order given: each exactly as
    ``plan([order])`` would on the states the orders before it left (not as one batch, whose
    lines go by channel priority). For concurrent single-order requests written together.
    """
    kits = kits or {}
    lines = _lines_in_turn(orders, states, projector, now_us, kits, room=room)
    if lines is None:  # input the engine refuses
        if len(orders) != 1:
            raise ValueError(
                "an order the allocation engine refuses (plan each alone to see which)"
            )
        lines = _allocate_vectorized(orders, states, projector, now_us)  # raises the engine's error
    return _assemble(orders, states, projector.network, lines, now_us, kits)


def fits_room(totals: Sequence[int], room: Sequence[int]) -> bool:
    """Whether lines that took ``totals`` per location took no more than each may give."""
    return len(totals) == len(room) and all(t <= r for t, r in zip(totals, room, strict=True))


def _allocate_vectorized(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    projector: Projector,
    now_us: int,
) -> Outcomes:
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
    return Outcomes(
        taken=outcome.taken.tolist(),
        backordered=outcome.backordered.tolist(),
        promise_day=outcome.promise_day.tolist(),
        promise_location=outcome.promise_location.tolist(),
        unfilled=outcome.unfilled.tolist(),
        totals=outcome.taken.sum(axis=0).tolist(),
    )


def _lines_in_turn(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    projector: Projector,
    now_us: int,
    kits: Mapping[str, KitDefinition] | None = None,
    by_priority: bool = False,
    room: Sequence[int] | None = None,
) -> Outcomes | None:
    """The orders one after another, each line as given (allocation.in_turn), or with
    ``by_priority`` the lines of higher-priority channels first (a batch). None when the
    input is one the engine refuses (it then raises the engine's error)."""
    network = projector.network
    kits = kits or {}
    skus = list(states)
    row = {sku: i for i, sku in enumerate(skus)}
    channel_index = {name: c for c, name in enumerate(network.channels)}
    lines: list[Line | KitLine] = []
    for order in orders:
        c = channel_index.get(order.channel, -1)
        for line in order.lines:
            kit = kits.get(line.sku)
            if kit is None:
                lines.append(Line(c, row[line.sku], line.quantity, order.backorder))
            else:
                parts = tuple((row[part.sku], part.quantity) for part in kit.components)
                lines.append(KitLine(c, parts, line.quantity))
    order_of = list(range(len(lines)))
    if by_priority:
        priority = network.priority.tolist()
        order_of.sort(key=lambda i: (priority[lines[i].channel], i))
    supply = projector.supply([states[sku] for sku in skus], now_us)
    in_order = [lines[i] for i in order_of]
    done = allocate_in_turn(supply, network, now_us // US_PER_DAY, in_order, room)
    if done is None or not by_priority:
        return done
    # Back in the order given: a line's outcomes (one per component for a kit) as a span.
    width = [len(line.components) if isinstance(line, KitLine) else 1 for line in lines]
    start, at = {}, 0
    for i in order_of:
        start[i], at = at, at + width[i]
    out = Outcomes()
    for i in range(len(lines)):
        for k in range(start[i], start[i] + width[i]):
            out.taken.append(done.taken[k])
            out.backordered.append(done.backordered[k])
            out.promise_day.append(done.promise_day[k])
            out.promise_location.append(done.promise_location[k])
            out.unfilled.append(done.unfilled[k])
    return out


def _assemble(
    orders: Sequence[OrderRequest],
    states: dict[str, SkuState],
    network: Network,
    outcome: Outcomes,
    now_us: int,
    kits: Mapping[str, KitDefinition],
) -> Planned:
    """Reservations, order results and new sku states out of the per-line outcome."""
    book = _Book(states)
    results: list[OrderResult] = []
    held_per_order: list[list[Held]] = []
    i = 0
    # Orders allocated together keep their order in the backorder queue (contract section
    # 9: "in the order they were first allocated"): a microsecond apart.
    for k, order in enumerate(orders):
        line_results: list[LineResult] = []
        held: list[Held] = []
        for kit_line in order.lines:
            kit = kits.get(kit_line.sku)
            if kit is None:
                parts = [kit_line]
            else:  # a line per component, with an id of its own for its reservations
                parts = [
                    OrderLine(f"{kit_line.line_id}/{j}", c.sku, kit_line.quantity * c.quantity)
                    for j, c in enumerate(kit.components, 1)
                ]
            part_results: list[LineResult] = []
            for line in parts:
                part_results.append(
                    _line_result(order, line, i, outcome, network, book, held, now_us + k)
                )
                i += 1
            if kit is None:
                line_results += part_results
                continue
            per_kit = kit.components[0].quantity
            kits_taken = (part_results[0].quantity - part_results[0].unfilled) // per_kit
            line_results.append(
                LineResult(
                    line_id=kit_line.line_id,
                    sku=kit_line.sku,
                    quantity=kit_line.quantity,
                    allocations=[],
                    backordered=0,
                    promise_date=None,
                    unfilled=kit_line.quantity - kits_taken,
                    components=part_results,
                )
            )
        results.append(OrderResult(order.order_id, order.channel, "allocated", line_results))
        held_per_order.append(held)
    new_states = [
        with_recent(
            msgspec.structs.replace(
                states[sku], reservations=(*states[sku].reservations, *book.new[sku])
            ),
            [Recent(created_event_id(r.reservation_id), CREATED, now_us) for r in book.new[sku]],
        )
        for sku in states
        if book.new[sku]
    ]
    return Planned(new_states, results, held_per_order, book.event_ids, outcome.taken)


def _line_result(
    order: OrderRequest,
    line: OrderLine,
    i: int,
    outcome: Outcomes,
    network: Network,
    book: _Book,
    held: list[Held],
    placed_at: int,
) -> LineResult:
    """The reservations and result of the ``i``-th line of the outcome."""
    taken_here: list[LineAllocation] = []
    for l_index, quantity in enumerate(outcome.taken[i]):
        if quantity:
            location = network.locations[l_index]
            reservation_id = book.reserve(order, line, location, quantity, held)
            taken_here.append(LineAllocation(location, quantity, reservation_id))
    promise: str | None = None
    backordered = outcome.backordered[i]
    if backordered:
        location = network.locations[outcome.promise_location[i]]
        day = NO_PROMISE if outcome.promise_day[i] == NONE else outcome.promise_day[i]
        book.reserve(order, line, location, backordered, held, (placed_at, day))
        promise = from_day(day).isoformat() if day != NO_PROMISE else None
    return LineResult(
        line_id=line.line_id,
        sku=line.sku,
        quantity=line.quantity,
        allocations=taken_here,
        backordered=backordered,
        promise_date=promise,
        unfilled=outcome.unfilled[i],
    )


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
        held: list[Held],
        backorder: tuple[int, int] | None = None,
    ) -> str:
        """With ``backorder`` (placed at, promise day), a claim on supply to come."""
        suffix = BACKORDER if backorder else ""
        base = f"{order.order_id}:{line.line_id}:{location}{suffix}"
        reservation_id, attempt = base, 1
        # An id left by an earlier attempt that was undone is not reused.
        while reservation_id in self.existing[line.sku]:
            attempt += 1
            reservation_id = f"{base}#{attempt}"
        self.existing[line.sku].add(reservation_id)
        placed_at, day = backorder or (0, NO_PROMISE)
        self.new[line.sku].append(
            Reservation(
                reservation_id,
                True,
                order.channel,
                location,
                quantity,
                placed_at=placed_at,
                promise_day=day,
            )
        )
        self.event_ids.setdefault(line.sku, []).append(created_event_id(reservation_id))
        held.append(Held(line.sku, reservation_id, location, quantity, placed_at, day))
        return reservation_id


def release(state: SkuState, reservation_ids: set[str], now_us: int) -> SkuState:
    """Release the named reservations of one sku (already released ones stay as they are)."""
    reservations = tuple(
        msgspec.structs.replace(r, released=True, closed_at=r.closed_at or now_us)
        if r.reservation_id in reservation_ids and not r.released
        else r
        for r in state.reservations
    )
    released = [
        Recent(released_event_id(r.reservation_id), RELEASED, now_us)
        for r in state.reservations
        if r.reservation_id in reservation_ids and not r.released
    ]
    return with_recent(msgspec.structs.replace(state, reservations=reservations), released)


def backordered_lines(stored: StoredOrder) -> list[LineResult]:
    """The lines a re-plan may have changed (contract section 9)."""
    return [line for line in stored.result.lines if line.backordered]


def current(stored: StoredOrder, lines: Mapping[str, bytes | None]) -> StoredOrder:
    """The order as planned now: its record, with what re-plans wrote for each line
    (``lines``: line_id -> the line's record, streams/backorders.py, or None)."""
    if not any(lines.values()) or stored.result.status == "released":
        return stored
    held = list(stored.held)
    results = []
    for line in stored.result.lines:
        record = lines.get(line.line_id)
        if not record:
            results.append(line)
            continue
        plan, conversions = read_line_record(record)
        converted = sorted(conversions, key=lambda c: c.reservation_id)
        allocations = [
            *line.allocations,
            *(LineAllocation(c.location, c.quantity, c.reservation_id) for c in converted),
        ]
        held += [Held(line.sku, c.reservation_id, c.location, c.quantity) for c in converted]
        if plan.reservation_id is not None and plan.location is not None:
            held.append(Held(line.sku, plan.reservation_id, plan.location, plan.backordered))
        results.append(
            msgspec.structs.replace(
                line,
                allocations=allocations,
                backordered=plan.backordered,
                promise_date=plan.promise_date,
            )
        )
    result = msgspec.structs.replace(stored.result, lines=results)
    return msgspec.structs.replace(stored, result=result, held=held)
