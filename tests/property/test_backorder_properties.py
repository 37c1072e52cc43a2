"""Backorders follow supply (contract section 9): the incremental re-planning the writers do
equals a from-scratch plan of every open backorder, for any interleaving of supply events,
allocations and releases.

The incremental side runs the product's own steps, as its writers do: the fold then
``streams.backorders.replan`` for an event (the consumer), ``atp_service.orders.plan`` for
an allocation, ``orders.release`` then ``replan`` for a release (the API). The from-scratch
side is written here from the contract's words alone: take the supply with no backorder,
then serve the open backorders in channel priority order, then in the order they were first
allocated, stock first, the rest promised at the earliest date whose atp covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from atp_service.config import Settings, parse_config
from atp_service.model import projector_for
from atp_service.orders import (
    LineResult,
    OrderLine,
    OrderRequest,
    StoredOrder,
    current,
    plan,
    release,
)
from streams.backorders import (
    line_field,
    line_records,
    merge_line_record,
    open_claims,
    order_and_line,
    replan,
)
from streams.events import AnyEvent, BinMovement, Inbound
from streams.fold import fold
from streams.state import (
    NO_PROMISE,
    US_PER_DAY,
    BinStock,
    InboundLine,
    SkuState,
    from_day,
    to_day,
    to_us,
)
from tests.conftest import config_text

SETTINGS: Settings = parse_config(config_text())  # web (1): DC-EAST, DC-WEST, horizon 14;
PROJECTOR = projector_for(SETTINGS)  # marketplace (2): DC-EAST, safety stock 5, horizon 0
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
TODAY = to_day(T0.date())
SKU = "SKU-1"
WINDOW_US = 7 * US_PER_DAY
LOCATIONS = ("DC-EAST", "DC-WEST")


@dataclass
class World:
    """What Redis would hold: the sku's state, the order records and their lines' records."""

    state: SkuState = field(default_factory=lambda: SkuState(sku=SKU))
    # Another sku with claims of its own, written with SKU-1 every time (a batch of two
    # skus, SKU-1 in its second row): its plan must not move, nor leak into SKU-1's.
    other: SkuState = field(default_factory=lambda: _other())
    orders: dict[str, StoredOrder] = field(default_factory=dict)
    lines: dict[str, bytes] = field(default_factory=dict)  # the sku's hash of lines
    clock: int = to_us(T0)
    n: int = 0

    def tick(self) -> int:
        self.clock += 1_000_000
        self.n += 1
        return self.clock

    def replan(self, state: SkuState, now: int) -> None:
        replanned = replan([self.other, state], PROJECTOR, now, WINDOW_US)
        assert replanned.states[OTHER] == self.other  # planned already: nothing changes
        if SKU in replanned.events:  # the re-plan applies its events as the fold does
            given = {SKU: state}
            folded = fold(
                given, replanned.events[SKU], seen=frozenset(), now_us=now, window_us=WINDOW_US
            )
            assert replanned.states[SKU] == folded.states[SKU]
        self.state = replanned.states[SKU]
        assert set(line_records(replanned)) <= {SKU}
        for name, record in line_records(replanned).get(SKU, {}).items():
            self.lines[name] = merge_line_record(self.lines.get(name), record)

    def event(self, event: AnyEvent) -> None:
        now = self.tick()
        folded = fold({SKU: self.state}, [event], seen=frozenset(), now_us=now, window_us=WINDOW_US)
        self.replan(folded.states[SKU], now)

    def allocate(self, order_id: str, channel: str, quantity: int) -> None:
        now = self.tick()
        request = OrderRequest(order_id, channel, [OrderLine("1", SKU, quantity)], backorder=True)
        planned = plan([request], {SKU: self.state}, PROJECTOR, now)
        if planned.states:
            self.state = planned.states[0]
        self.orders[order_id] = StoredOrder("", planned.results[0], planned.held[0])

    def release(self, order_id: str) -> None:
        now = self.tick()
        order = self.view(order_id)
        self.orders[order_id] = msgspec.structs.replace(
            order, result=msgspec.structs.replace(order.result, status="released")
        )
        ids = {h.reservation_id for h in order.held}
        self.replan(release(self.state, ids, now), now)

    def view(self, order_id: str) -> StoredOrder:
        """GET /v1/allocations/{order_id}."""
        stored = self.orders[order_id]
        return current(stored, {"1": self.lines.get(line_field(order_id, "1"))})


OTHER = "SKU-2"


def _other() -> SkuState:
    """SKU-2: 3 on hand, 20 due in 2 days, and backorders of 2 and 5 planned on them."""
    now = to_us(T0)
    state = SkuState(
        OTHER,
        bins=(BinStock("DC-EAST", "A", "available", 3),),
        inbound=(InboundLine("PO-9", "DC-WEST", 20, TODAY + 2, now),),
    )
    for order_id, quantity in (("X-1", 5), ("X-2", 5)):
        request = OrderRequest(order_id, "web", [OrderLine("1", OTHER, quantity)], backorder=True)
        state = plan([request], {OTHER: state}, PROJECTOR, now).states[0]
    return replan([state], PROJECTOR, now, WINDOW_US).states[OTHER]


# -- the from-scratch plan, from the contract's words -------------------------------------


def from_scratch(state: SkuState, now: int) -> dict[str, tuple[int, int, int | None, str]]:
    """Order -> (units taken from stock now, units backordered, promise day, location)."""
    today = now // US_PER_DAY
    claims = open_claims(state, now)
    claim_ids = {r.reservation_id for r in claims}
    free = dict.fromkeys(LOCATIONS, 0)
    for b in state.bins:
        if b.status == "available":
            free[b.location] += b.quantity
    for r in state.reservations:
        if r.reservation_id not in claim_ids:
            free[r.location] -= r.open_quantity(now)
    channels = {c.name: c for c in SETTINGS.channels}
    queue = sorted(
        claims,
        key=lambda r: (channels[r.channel].priority, r.placed_at, r.reservation_id),
    )
    out = {}
    for claim in queue:
        channel = channels[claim.channel]
        ss = channel.safety_stock
        net = sum(free[loc] for loc in channel.locations)
        take = min(claim.open_quantity(now), max(0, net - ss))
        # Stock first: one location that holds it all, else in the channel's order.
        whole = [loc for loc in channel.locations if free[loc] >= take]
        if take and whole:
            free[whole[0]] -= take
        else:
            left = take
            for loc in channel.locations:
                part = min(max(0, free[loc]), left)
                free[loc] -= part
                left -= part
        rest = claim.open_quantity(now) - take
        promise: int | None = None
        where = claim.location
        if rest:
            due = sorted(
                (max(i.eta, today), channel.locations.index(i.location), i.inbound_id, i)
                for i in state.inbound
                if i.quantity > 0
                and i.location in channel.locations
                and i.eta <= today + channel.inbound_horizon_days
            )
            for d, *_ in due:
                total = sum(i.quantity for e, _, _, i in due if e <= d)
                if net - take + total - ss >= rest:
                    first = min((p, i.location) for e, p, _, i in due if e == d)
                    promise, where = d, first[1]
                    break
            free[where] -= rest
        out[order_and_line(claim.reservation_id)[0]] = (take, rest, promise, where)
    return out


# -- operations -----------------------------------------------------------------------------


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    placed: list[str] = []
    for i in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["receipt", "ship", "inbound", "order", "order", "release"]))
        location = draw(st.sampled_from(LOCATIONS))
        if kind == "receipt":
            ops.append(("event", ("receipt", location, draw(st.integers(1, 8)))))
        elif kind == "ship":
            ops.append(("event", ("ship", location, draw(st.integers(1, 4)))))
        elif kind == "inbound":
            po = draw(st.sampled_from(["PO-1", "PO-2", "PO-3"]))
            eta = draw(st.integers(-1, 16))
            ops.append(("event", ("inbound", location, po, draw(st.integers(0, 12)), eta)))
        elif kind == "order":
            order_id = f"O-{i}"
            placed.append(order_id)
            channel = draw(st.sampled_from(["web", "web", "marketplace"]))
            ops.append(("order", (order_id, channel, draw(st.integers(1, 6)))))
        elif placed:
            ops.append(("release", draw(st.sampled_from(placed))))
    return ops


def to_event(world: World, spec: tuple[Any, ...]) -> AnyEvent:
    at = datetime.fromtimestamp(world.clock / 1e6, UTC) + timedelta(seconds=1)
    eid = f"e-{world.n}"
    if spec[0] == "receipt":
        return BinMovement(
            event_id=eid, occurred_at=at, sku=SKU, location=spec[1], quantity=spec[2],
            to_bin="A", to_status="available",
        )  # fmt: skip
    if spec[0] == "ship":
        return BinMovement(
            event_id=eid, occurred_at=at, sku=SKU, location=spec[1], quantity=spec[2],
            from_bin="A", from_status="available",
        )  # fmt: skip
    _, location, po, quantity, eta = spec
    return Inbound(
        event_id=eid, occurred_at=at, sku=SKU, inbound_id=po, location=location,
        quantity=quantity, eta=date.fromordinal(T0.date().toordinal() + eta),
    )  # fmt: skip


def line_of(world: World, order_id: str) -> LineResult:
    return world.view(order_id).result.lines[0]


@given(ops=operations())
def test_incremental_replanning_equals_a_plan_from_scratch(ops: list[tuple[str, Any]]) -> None:
    world = World()
    released: set[str] = set()
    for kind, spec in ops:
        if kind == "event":
            world.event(to_event(world, spec))
        elif kind == "order":
            world.allocate(*spec)
        elif spec not in released:
            released.add(spec)
            world.release(spec)
        else:
            continue
        if kind == "order":
            continue  # an allocation is not a supply change: the next change re-plans
        now = world.clock
        expected = from_scratch(world.state, now)
        # Nothing a from-scratch plan would take from stock is left backordered, and every
        # claim is where, and promised when, that plan puts it.
        claims = {order_and_line(r.reservation_id)[0]: r for r in open_claims(world.state, now)}
        assert set(claims) == set(expected)
        for order_id, (take, rest, promise, where) in expected.items():
            claim = claims[order_id]
            assert take == 0, (order_id, expected)
            assert (claim.open_quantity(now), claim.location) == (rest, where)
            assert claim.promise_day == (NO_PROMISE if promise is None else promise)
    # What GET answers agrees with the reservations behind it, order by order.
    now = world.clock
    for order_id, stored in world.orders.items():
        line = line_of(world, order_id)
        assert sum(a.quantity for a in line.allocations) + line.backordered + line.unfilled == (
            line.quantity
        )
        mine = [
            r
            for r in world.state.reservations
            if r.created and order_and_line(r.reservation_id)[0] == order_id
        ]
        if stored.result.status == "released":
            assert all(r.open_quantity(now) == 0 for r in mine)
            continue
        claim = [r for r in mine if r.is_backorder and r.open_quantity(now)]
        assert sum(r.open_quantity(now) for r in claim) == line.backordered
        if claim:
            (only,) = claim
            promise = None if only.promise_day == NO_PROMISE else only.promise_day
            assert line.promise_date == (None if promise is None else from_day(promise).isoformat())
        allocated = {a.reservation_id: a.quantity for a in line.allocations}
        held = {r.reservation_id: r.quantity for r in mine if not r.is_backorder}
        assert allocated == held
