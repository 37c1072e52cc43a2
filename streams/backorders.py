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
from functools import partial
from typing import Final, Literal, get_args

import msgspec

from allocation.network import Network
from allocation.replan import Claim, ClaimPlan, Planner
from streams.changeset import (
    ChangeSet,
    build_changeset,
    count_capacity,
    order_update_field,
    reservation_field,
)
from streams.events import AnyEvent, ReservationCreated, ReservationReleased
from streams.fold import fold
from streams.projector import Projector, format_as_of
from streams.state import NO_PROMISE, US_PER_DAY, Reservation, SkuState, from_day, from_us

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


@dataclass
class LineChange:
    plan: LinePlan
    converted: list[Converted] = field(default_factory=list)


@dataclass
class Replanned:
    """What re-planning changed. ``states`` holds every sku given, changed or not."""

    states: dict[str, SkuState]
    events: dict[str, list[AnyEvent]] = field(default_factory=dict)  # sku -> applied
    # (sku, order_id, line_id) -> the line's new plan and its new allocations
    lines: dict[tuple[str, str, str], LineChange] = field(default_factory=dict)
    orders: dict[str, Reason] = field(default_factory=dict)  # order_id -> why it changed
    # Per conversion: units taken from stock per network location (for capacity counts).
    taken: list[list[int]] = field(default_factory=list)
    # Skus whose claims a location's capacity kept from stock: planned again tomorrow.
    held_back: set[str] = field(default_factory=set)

    def event_ids(self) -> dict[str, list[str]]:
        return {sku: [e.event_id for e in events] for sku, events in self.events.items()}


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
        claims = open_claims(state, now_us)
        # A claim whose channel or location left the config cannot be planned: it stays.
        queue = sorted(
            (r for r in claims if r.channel in channel_index and r.location in location_index),
            key=lambda r: (priority[channel_index[r.channel]], r.placed_at, r.reservation_id),
        )
        if queue:
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
    events: list[AnyEvent] = []
    for row, (state, queue) in enumerate(queues):
        wanted = [
            Claim(channel_index[r.channel], r.open_quantity(now_us), location_index[r.location])
            for r in queue
        ]
        plans = planner.plan(row, wanted)
        out.taken += [p.taken for p in plans if any(p.taken)]
        made = _events(state, queue, plans, network, now_us, out)
        if made:
            out.events[state.sku] = made
            events += made
        if row in planner.held_back:
            out.held_back.add(state.sku)
    if events:
        changed = {sku: out.states[sku] for sku in out.events}
        folded = fold(changed, events, seen=frozenset(), now_us=now_us, window_us=window_us)
        out.states.update(folded.states)
    return out


def _events(
    state: SkuState,
    queue: list[Reservation],
    plans: list[ClaimPlan],
    network: Network,
    now_us: int,
    out: Replanned,
) -> list[AnyEvent]:
    """The reservation events that turn ``queue`` into ``plans``; what each line now holds
    and why its order changed go into ``out``."""
    taken_ids = {r.reservation_id for r in state.reservations}
    occurred = from_us(now_us)
    events: list[AnyEvent] = []

    def new_id(base: str) -> str:
        # The re-plan's time makes the id (and its event ids) new for good: the state alone
        # cannot say, as it forgets closed reservations after the dedupe window.
        reservation_id, attempt = f"{base}#{now_us}", 1
        while reservation_id in taken_ids:  # the sku re-planned twice in one microsecond
            attempt += 1
            reservation_id = f"{base}#{now_us}.{attempt}"
        taken_ids.add(reservation_id)
        return reservation_id

    sku, locations = state.sku, network.locations
    for claim, plan in zip(queue, plans, strict=True):
        where = locations[plan.location]
        converted = any(plan.taken)
        if not converted and (where, plan.promise_day) == (claim.location, claim.promise_day):
            continue
        order_id, line_id = order_and_line(claim.reservation_id)
        reserve = partial(_created, sku, claim.channel, occurred)
        events.append(
            ReservationReleased(
                event_id=released_event_id(claim.reservation_id),
                occurred_at=occurred,
                sku=sku,
                reservation_id=claim.reservation_id,
            )
        )
        change = LineChange(NOTHING_CLAIMED)
        if converted:
            for l_index, quantity in enumerate(plan.taken):
                if quantity:
                    location = locations[l_index]
                    reservation_id = new_id(f"{order_id}:{line_id}:{location}")
                    events.append(reserve(reservation_id, location, quantity))
                    change.converted.append(Converted(reservation_id, location, quantity))
        if plan.backordered:
            promise = None if plan.promise_day == NO_PROMISE else from_day(plan.promise_day)
            reservation_id = new_id(f"{order_id}:{line_id}:{where}{BACKORDER}")
            claimed = reserve(reservation_id, where, plan.backordered)
            events.append(
                msgspec.structs.replace(
                    claimed, placed_at=from_us(claim.placed_at), promise_date=promise
                )
            )
            change.plan = LinePlan(
                plan.backordered,
                None if promise is None else promise.isoformat(),
                reservation_id,
                where,
            )
        # A line holds one claim at a time (the allocation makes one, a re-plan replaces it).
        out.lines[(state.sku, order_id, line_id)] = change
        if converted:
            out.orders[order_id] = "confirmed"
        else:
            out.orders.setdefault(order_id, "promise_changed")
    return events


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


class AllocationUpdate(msgspec.Struct, frozen=True):
    """What the outbox keeps of an order's update: its current result is read when it is
    published (so the message carries the plan as it is then)."""

    reason: Reason
    as_of: str


PLAN_FIELD: Final = "plan"
_encode: Final = msgspec.json.Encoder().encode


def converted_field(reservation_id: str) -> str:
    return f"c:{reservation_id}"


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
    as applied and queued in the outbox; the order lines' records; a notice per order; the
    stock taken at locations with a capacity, within ``room``)."""
    replanned = replan(states, projector, now_us, window_us, room)
    if not replanned.events:
        changes = build_changeset(states, versions, projector, now_us, seen, offsets)
        return _due_tomorrow(changes, replanned, now_us), replanned
    marks: dict[str, list[str]] = {sku: list(ids) for sku, ids in (seen or {}).items()}
    for sku, ids in replanned.event_ids().items():
        marks.setdefault(sku, []).extend(ids)
    changes = build_changeset(
        [replanned.states[s.sku] for s in states], versions, projector, now_us, marks, offsets
    )
    for sku, events in replanned.events.items():
        prefix = reservation_field(sku, "")  # the field is the prefix, then the event_id
        for event in events:
            changes.outbox[prefix + event.event_id] = _encode(event)
    for key, change in replanned.lines.items():
        fields = changes.line_fields.setdefault(key, {})
        fields[PLAN_FIELD] = _encode(change.plan)
        for converted in change.converted:
            fields[converted_field(converted.reservation_id)] = _encode(converted)
    count_capacity(changes, projector, replanned.taken, now_us)
    _due_tomorrow(changes, replanned, now_us)
    as_of = format_as_of(now_us)
    # Notices differ only by their order: one encoding per reason.
    notices = {reason: _encode(AllocationUpdate(reason, as_of)) for reason in REASONS}
    for order_id, reason in replanned.orders.items():
        changes.outbox[order_update_field(order_id)] = notices[reason]
    return changes, replanned
