"""Backorders follow supply (contract section 9): the shell-free step every writer runs.

Whoever changes the supply of a sku (the consumer's fold, the sweep, a release or a
safety-stock change over the API) passes the new states through ``replan`` before writing
them. For each sku with open backorders it plans every backorder again
(``allocation.replan``) and turns what changed into reservation events of the contract: a
claim that changed is released, and its units reserved again as they are now planned
(from stock, or as a new claim carrying its promise date). The events are folded into the
states here, so the write applies exactly what the ledger will replay (``atp rebuild`` gives
the same reservations and promise dates), and they go out on the reservations topic through
the outbox with the write.

Pure: states in; states, events and what each order line now holds out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, get_args

import msgspec

from allocation.network import Network
from allocation.replan import Claim, ClaimPlan, Planner
from streams.changeset import (
    ChangeSet,
    build_changeset,
    claim_capacity,
    count_capacity,
    order_update_field,
    reservations_field,
)
from streams.events import AnyEvent, ReservationCreated, ReservationReleased
from streams.fold import RECENT_KIND, fold_own
from streams.projector import Projector, format_as_of
from streams.state import (
    NO_PROMISE,
    RECENT_KEPT,
    US_PER_DAY,
    Recent,
    Reservation,
    SkuState,
    from_day,
    from_us,
    to_us,
)

CREATED_PREFIX: Final = "atp-alloc:"
RELEASED_PREFIX: Final = "atp-release:"
BACKORDER: Final = ":backorder"

Reason = Literal["confirmed", "promise_changed"]
REASONS: Final = get_args(Reason)


def created_event_id(reservation_id: str) -> str:
    """Deterministic, so the consumer recognises the service's own reservations as applied."""
    return f"{CREATED_PREFIX}{reservation_id}"


def released_event_id(reservation_id: str) -> str:
    return f"{RELEASED_PREFIX}{reservation_id}"


def order_and_line(reservation_id: str) -> tuple[str, str]:
    """The order and line of a reservation atp made ("<order>:<line>:<location>...";
    neither id may hold a colon)."""
    order_id, line_id, _ = reservation_id.split(":", 2)
    return order_id, line_id


class Converted(msgspec.Struct, frozen=True):
    """Units of a line's backorder now allocated from stock."""

    reservation_id: str
    location: str
    quantity: int


class LinePlan(msgspec.Struct, frozen=True):
    """A line's backorder as planned last: what it still claims, where, and until when."""

    backordered: int
    promise_date: str | None
    reservation_id: str | None  # the claim holding the backordered units, if any
    location: str | None


NOTHING_CLAIMED: Final = LinePlan(0, None, None, None)  # a line whose backorder is filled


class LineChange(msgspec.Struct):
    plan: LinePlan
    converted: list[Converted] = []


@dataclass
class Replanned:
    """What re-planning changed. ``states`` holds every sku given, changed or not."""

    states: dict[str, SkuState]
    event_ids: dict[str, list[str]] = field(default_factory=dict)  # sku -> applied, in order
    # (sku, order_id, line_id) -> the line's new plan and its new allocations
    lines: dict[tuple[str, str, str], LineChange] = field(default_factory=dict)
    orders: dict[str, Reason] = field(default_factory=dict)  # order_id -> why it changed
    # Per conversion: units taken from stock per network location (for capacity counts).
    taken: list[list[int]] = field(default_factory=list)
    # Skus whose claims a location's capacity kept from stock: planned again tomorrow.
    held_back: set[str] = field(default_factory=set)
    # sku -> its events as the outbox keeps them (``expanded`` makes them again).
    compact: dict[str, bytes] = field(default_factory=dict)

    @property
    def events(self) -> dict[str, list[AnyEvent]]:
        """sku -> the events applied, as they are published."""
        return {sku: expanded(sku, compact) for sku, compact in self.compact.items()}


def open_claims(state: SkuState, now_us: int) -> list[Reservation]:
    return [r for r in state.reservations if r.is_backorder and r.open_quantity(now_us) > 0]


def replan(
    states: Iterable[SkuState],
    projector: Projector,
    now_us: int,
    window_us: int,
    room: Sequence[int] | None = None,
) -> Replanned:
    """Plan every open backorder of ``states`` on their supply of now; ``room``: what each
    network location may still give today (``Projector.room``), None for no limit."""
    out = Replanned(states={state.sku: state for state in states})
    network = projector.network
    channel_index = {name: c for c, name in enumerate(network.channels)}
    location_index = network.location_index()
    priority: list[int] = network.priority.tolist()
    queues: list[tuple[SkuState, list[Reservation]]] = []
    for state in out.states.values():
        # A claim whose channel or location left the config cannot be planned: it stays.
        queue = [
            r
            for r in open_claims(state, now_us)
            if r.channel in channel_index and r.location in location_index
        ]
        if queue:
            queue.sort(
                key=lambda r: (priority[channel_index[r.channel]], r.placed_at, r.reservation_id)
            )
            queues.append((state, queue))
    if not queues:
        return out
    # One supply for every sku, each without its claims, planned row by row.
    withouts = []
    for state, queue in queues:
        in_queue = {r.reservation_id for r in queue}
        kept = tuple(r for r in state.reservations if r.reservation_id not in in_queue)
        withouts.append(msgspec.structs.replace(state, reservations=kept))
    planner = Planner(projector.supply(withouts, now_us), network, now_us // US_PER_DAY, room)
    occurred_us = to_us(from_us(now_us))
    for row, (state, queue) in enumerate(queues):
        wanted = [
            Claim(channel_index[r.channel], r.open_quantity(now_us), location_index[r.location])
            for r in queue
        ]
        plans = planner.plan(row, wanted)
        out.taken += [p.taken for p in plans if any(p.taken)]
        made = _Made(state, now_us)
        _events(made, queue, plans, network, out)
        if made.ids:
            out.event_ids[state.sku] = made.ids
            out.compact[state.sku] = _compact_encode((now_us, made.compact))
            # The events folded into the state, as the ledger will replay them.
            latest = [
                Recent(event_id, _kind(event_id), occurred_us)
                for event_id in made.ids[-RECENT_KEPT:]
            ]
            out.states[state.sku] = fold_own(
                state, latest, made.released, made.created, now_us, window_us
            )
        if row in planner.held_back:
            out.held_back.add(state.sku)
    return out


def _kind(event_id: str) -> int:
    """The type of a re-plan's event, by its id (``released_event_id``, ``created_event_id``)."""
    released = event_id.startswith(RELEASED_PREFIX)
    return RECENT_KIND[ReservationReleased if released else ReservationCreated]


class _Made:
    """A sku's re-plan events as they are made, and what they do to its reservations: the
    events themselves are made only when published (``expanded``), from ``compact``."""

    def __init__(self, state: SkuState, now_us: int) -> None:
        self.sku = state.sku
        self.now_us = now_us
        self.ids: list[str] = []  # the events' ids, in order
        self.released: set[str] = set()  # open reservations the events release
        self.created: list[Reservation] = []  # the records of those they create
        self.compact: list[Compact] = []  # the events as the outbox keeps them
        self.taken_ids = {r.reservation_id for r in state.reservations}

    def new_id(self, base: str) -> str:
        # The re-plan's time makes the id (and its event ids) new for good: the state alone
        # cannot say, as it forgets closed reservations after the dedupe window.
        reservation_id, attempt = f"{base}#{self.now_us}", 1
        while reservation_id in self.taken_ids:  # the sku re-planned twice in one microsecond
            attempt += 1
            reservation_id = f"{base}#{self.now_us}.{attempt}"
        self.taken_ids.add(reservation_id)
        return reservation_id

    def release(self, reservation_id: str) -> None:
        self.released.add(reservation_id)
        self.ids.append(RELEASED_PREFIX + reservation_id)  # released_event_id, inlined
        self.compact.append((reservation_id,))

    def reserve(self, line: str, claim: Reservation, location: str, quantity: int) -> str:
        """Units of ``claim``'s line (``line``: "<order>:<line>") reserved from stock at
        ``location``."""
        reservation_id = self.new_id(f"{line}:{location}")
        channel = claim.channel
        self.ids.append(CREATED_PREFIX + reservation_id)  # created_event_id, inlined
        self.compact.append((reservation_id, channel, location, quantity))
        # As the fold records the event (streams/fold.py).
        self.created.append(Reservation(reservation_id, True, channel, location, quantity))
        return reservation_id

    def claim(self, line: str, claim: Reservation, location: str, quantity: int, day: int) -> str:
        """Units of ``claim``'s line claimed again at ``location``, promised ``day``."""
        reservation_id = self.new_id(f"{line}:{location}{BACKORDER}")
        self.ids.append(CREATED_PREFIX + reservation_id)
        self.compact.append(
            (reservation_id, claim.channel, location, quantity, claim.placed_at, day)
        )
        # As the fold records the event (streams/fold.py), placed_at as the event says it.
        self.created.append(
            Reservation(
                reservation_id,
                True,
                claim.channel,
                location,
                quantity,
                placed_at=to_us(from_us(claim.placed_at)),
                promise_day=day,
            )
        )
        return reservation_id


def _events(
    made: _Made,
    queue: list[Reservation],
    plans: list[ClaimPlan],
    network: Network,
    out: Replanned,
) -> None:
    """The reservation events that turn ``queue`` into ``plans`` (into ``made``); what each
    line now holds and why its order changed go into ``out``."""
    locations, lines, orders = network.locations, out.lines, out.orders
    for claim, plan in zip(queue, plans, strict=True):
        where = locations[plan.location]
        converted = any(plan.taken)
        if not converted and (where, plan.promise_day) == (claim.location, claim.promise_day):
            continue
        order_id, line_id = order_and_line(claim.reservation_id)
        line = f"{order_id}:{line_id}"
        made.release(claim.reservation_id)
        change = LineChange(NOTHING_CLAIMED, [])
        if converted:
            for l_index, quantity in enumerate(plan.taken):
                if quantity:
                    location = locations[l_index]
                    reservation_id = made.reserve(line, claim, location, quantity)
                    change.converted.append(Converted(reservation_id, location, quantity))
        if plan.backordered:
            day = plan.promise_day
            reservation_id = made.claim(line, claim, where, plan.backordered, day)
            change.plan = LinePlan(
                plan.backordered,
                None if day == NO_PROMISE else from_day(day).isoformat(),
                reservation_id,
                where,
            )
        # A line holds one claim at a time (the allocation makes one, a re-plan replaces it).
        lines[(made.sku, order_id, line_id)] = change
        if converted:
            orders[order_id] = "confirmed"
        else:
            orders.setdefault(order_id, "promise_changed")


def _released(sku: str, occurred: datetime, reservation_id: str) -> ReservationReleased:
    return ReservationReleased(
        event_id=released_event_id(reservation_id),
        occurred_at=occurred,
        sku=sku,
        reservation_id=reservation_id,
    )


def _created(
    sku: str, channel: str, occurred: datetime, reservation_id: str, location: str, quantity: int
) -> ReservationCreated:
    return ReservationCreated(
        event_id=created_event_id(reservation_id),
        occurred_at=occurred,
        sku=sku,
        reservation_id=reservation_id,
        channel=channel,
        location=location,
        quantity=quantity,
    )


def _claimed(
    sku: str,
    occurred: datetime,
    reservation_id: str,
    channel: str,
    location: str,
    quantity: int,
    placed_at_us: int,
    day: int,
) -> ReservationCreated:
    return msgspec.structs.replace(
        _created(sku, channel, occurred, reservation_id, location, quantity),
        placed_at=from_us(placed_at_us),
        promise_date=None if day == NO_PROMISE else from_day(day),
    )


# A sku's re-plan events as the outbox keeps them (``Replanned.compact``): the re-plan's
# time, then per event what it says beyond the sku and the time, which all share. A re-plan
# makes two or more events per backorder, and their JSON was the largest part of the write
# that carries them; this is a fifth of it. Per event: (reservation_id,) released;
# (reservation_id, channel, location, quantity) reserved from stock; the same, then
# placed_at (us) and the promised day (NO_PROMISE: none), claimed.
Compact = tuple[str] | tuple[str, str, str, int] | tuple[str, str, str, int, int, int]
_compact_encode: Final = msgspec.msgpack.Encoder().encode
_compact_decode: Final = msgspec.msgpack.Decoder(tuple[int, list[list[str | int]]]).decode
_encode: Final = msgspec.json.Encoder().encode


def expanded(sku: str, compact: bytes) -> list[AnyEvent]:
    """The events of a sku's ``Replanned.compact``, as ``replan`` applied them."""
    now_us, items = _compact_decode(compact)
    occurred = from_us(now_us)
    out: list[AnyEvent] = []
    for item in items:
        if len(item) == 1:
            out.append(_released(sku, occurred, *item))  # type: ignore[arg-type]
        elif len(item) == 4:
            rid, channel, location, quantity = item
            out.append(_created(sku, channel, occurred, rid, location, quantity))  # type: ignore[arg-type]
        else:
            out.append(_claimed(sku, occurred, *item))  # type: ignore[arg-type]
    return out


def expand_events(sku: str, compact: bytes) -> list[bytes]:
    """The events (JSON) of a sku's ``Replanned.compact``, as ``replan`` made them."""
    return [_encode(event) for event in expanded(sku, compact)]


class AllocationUpdate(msgspec.Struct, frozen=True):
    """What the outbox keeps of an order's update: its current result is read when it is
    published (so the message carries the plan as it is then)."""

    reason: Reason
    as_of: str


# What re-plans made of an order line's backorder is one record, a field of its sku's hash
# of lines named ``line_field(order_id, line_id)``, so that a write re-planning a sku sets
# all of its lines at once. The record is lines of JSON: the line's plan (LinePlan), then
# one list of conversions (Converted) per re-plan that converted units of the line. A write
# brings each line's record as if it had none yet (its plan, then its conversions if any),
# and where it has one, the conversions it holds go between (``merge_line_record``, which
# the store's write script does too).
RECORD_SEPARATOR: Final = b"\n"  # JSON as msgspec writes it holds no newline


def line_field(order_id: str, line_id: str) -> str:
    return f"{order_id}\x1f{line_id}"


def order_of_line(field: str) -> str:
    """The order_id of a ``line_field``."""
    return field.partition("\x1f")[0]


def merge_line_record(old: bytes | None, record: bytes) -> bytes:
    """A line's record once ``record`` (as written by a re-plan) is written onto ``old``
    (None: no record yet): the new plan, the conversions held before, the new ones."""
    at = old.find(RECORD_SEPARATOR) if old else -1
    if old is None or at < 0:
        return record
    cut = record.find(RECORD_SEPARATOR)
    if cut < 0:
        return record + old[at:]
    return record[:cut] + old[at:] + record[cut:]


_plan_decoder: Final = msgspec.json.Decoder(LinePlan)
_converted_decoder: Final = msgspec.json.Decoder(list[Converted])


def read_line_record(raw: bytes) -> tuple[LinePlan, list[Converted]]:
    """A line's plan as last written, and every conversion written for it, oldest first."""
    plan, *batches = raw.split(RECORD_SEPARATOR)
    return _plan_decoder.decode(plan), [c for b in batches for c in _converted_decoder.decode(b)]


NOTHING_CLAIMED_RECORD: Final = _encode(NOTHING_CLAIMED)


def line_records(replanned: Replanned) -> dict[str, dict[str, bytes]]:
    """Per sku, its re-planned lines' records as a write brings them (field -> record)."""
    out: dict[str, dict[str, bytes]] = {}
    for (sku, order_id, line_id), change in replanned.lines.items():
        plan = change.plan
        record = NOTHING_CLAIMED_RECORD if plan is NOTHING_CLAIMED else _encode(plan)
        if change.converted:
            record += RECORD_SEPARATOR + _encode(change.converted)
        mine = out.get(sku)
        if mine is None:
            mine = out[sku] = {}
        mine[f"{order_id}\x1f{line_id}"] = record  # line_field, inlined: runs per line
    return out


def _due_tomorrow(changes: ChangeSet, replanned: Replanned, now_us: int) -> ChangeSet:
    """Capacity comes back at the next UTC day: claims it held back are planned again then."""
    if replanned.held_back:
        tomorrow_ms = (now_us // US_PER_DAY + 1) * US_PER_DAY // 1000
        for write in changes.skus:
            if write.sku in replanned.held_back:
                write.due_ms = min(write.due_ms or tomorrow_ms, tomorrow_ms)
    return changes


def build_replanned(
    states: Sequence[SkuState],
    versions: Mapping[str, int],
    projector: Projector,
    now_us: int,
    window_us: int,
    seen: Mapping[str, Iterable[str]] | None = None,
    offsets: Mapping[str, int] | None = None,
    room: Sequence[int] | None = None,
) -> tuple[ChangeSet, Replanned]:
    """``build_changeset`` for states whose supply changed: their backorders planned again
    first, and what that changed carried by the same write (the reservation events, marked
    as applied and queued in the outbox; the order lines' plans and conversions; a notice
    per order; the stock taken at locations with a capacity, within ``room``)."""
    replanned = replan(states, projector, now_us, window_us, room)
    if not replanned.event_ids:
        changes = build_changeset(states, versions, projector, now_us, seen, offsets)
        return _due_tomorrow(changes, replanned, now_us), replanned
    marks: dict[str, list[str]] = {sku: list(ids) for sku, ids in (seen or {}).items()}
    for sku, ids in replanned.event_ids.items():
        marks.setdefault(sku, []).extend(ids)
    changes = build_changeset(
        [replanned.states[s.sku] for s in states], versions, projector, now_us, marks, offsets
    )
    for write in changes.skus:  # their ids came last in ``marks``
        write.own = len(replanned.event_ids.get(write.sku, ()))
    outbox = changes.outbox
    for sku, compact in replanned.compact.items():
        outbox[reservations_field(sku)] = compact
    changes.lines = line_records(replanned)
    count_capacity(changes, projector, replanned.taken, now_us)
    converted = replanned.lines.items()
    claim_capacity(
        changes,
        projector,
        (
            (sku, c.reservation_id, c.location, c.quantity)
            for (sku, _, _), ch in converted
            for c in ch.converted
        ),
        now_us,
    )
    _due_tomorrow(changes, replanned, now_us)
    as_of = format_as_of(now_us)
    # Notices differ only by their order: one encoding per reason.
    notices = {reason: _encode(AllocationUpdate(reason, as_of)) for reason in REASONS}
    prefix = order_update_field("")  # the field is the prefix, then the order_id
    outbox.update(
        (prefix + order_id, notices[reason]) for order_id, reason in replanned.orders.items()
    )
    return changes, replanned
