"""The plain-Python path (``allocation.in_turn``, used by ``POST /v1/allocations``)
equals the vectorized engine on every single order, and ``plan_in_turn`` (concurrent
single orders written together) equals planning them one after another."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocation.network import Network
from atp_service.orders import OrderLine, OrderRequest, Planned, plan, plan_in_turn
from streams.projector import Projector
from streams.state import US_PER_DAY, BinStock, InboundLine, Reservation, SkuState
from tests.channels import Channel

TODAY = 20_000
NOW_US = TODAY * US_PER_DAY + 12 * 3600 * 1_000_000
EXAMPLES = settings(max_examples=300, deadline=None)
LOCATIONS = ("L0", "L1", "L2", "L3")


@st.composite
def projectors(draw: st.DrawFn) -> Projector:
    names = LOCATIONS[: draw(st.integers(1, len(LOCATIONS)))]
    channels = [
        Channel(
            name=f"c{c}",
            priority=draw(st.integers(1, 3)),
            locations=tuple(draw(st.permutations(names))[: draw(st.integers(1, len(names)))]),
            safety_stock=draw(st.integers(0, 5)),
            inbound_horizon_days=draw(st.integers(0, 10)),
        )
        for c in range(draw(st.integers(1, 3)))
    ]
    overrides = tuple(
        draw(st.dictionaries(st.sampled_from(["s0", "s1", "s2"]), st.integers(0, 6), max_size=2))
        for _ in channels
    )
    return Projector(Network.of(channels), frozenset({"available"}), overrides)


# Locations the network may not know and statuses that are not sellable are part of the input.
places = st.sampled_from([*LOCATIONS, "ELSEWHERE"])


@st.composite
def states(draw: st.DrawFn, sku: str) -> SkuState:
    bins = tuple(
        BinStock(
            location=draw(places),
            bin=f"B{i}",
            status=draw(st.sampled_from(["available", "available", "damaged"])),
            quantity=draw(st.integers(-3, 15)),
        )
        for i in range(draw(st.integers(0, 6)))
    )
    reservations = tuple(
        Reservation(
            reservation_id=f"r{i}",
            created=draw(st.booleans()) or True,
            channel="c0",
            location=draw(places),
            quantity=draw(st.integers(0, 8)),
            consumed=draw(st.integers(0, 3)),
            released=draw(st.integers(0, 4)) == 0,
            expires_at=draw(st.sampled_from([0, 0, NOW_US - 1, NOW_US, NOW_US + 1])),
        )
        for i in range(draw(st.integers(0, 5)))
    )
    inbound = tuple(
        InboundLine(
            inbound_id=f"i{i}",
            location=draw(places),
            quantity=draw(st.integers(0, 15)),
            eta=TODAY + draw(st.integers(-3, 14)),
            occurred_at=0,
        )
        for i in range(draw(st.integers(0, 6)))
    )
    safety = draw(
        st.dictionaries(st.sampled_from(["c0", "c1", "c2", "gone"]), st.integers(0, 6), max_size=2)
    )
    return SkuState(sku, bins=bins, reservations=reservations, inbound=inbound, safety_stock=safety)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Projector, dict[str, SkuState], OrderRequest]:
    projector = draw(projectors())
    skus = [f"s{i}" for i in range(draw(st.integers(1, 3)))]
    lines = [
        OrderLine(
            line_id=str(i), sku=draw(st.sampled_from(skus)), quantity=draw(st.integers(1, 12))
        )
        for i in range(draw(st.integers(1, 5)))
    ]
    used = list(dict.fromkeys(line.sku for line in lines))
    order = OrderRequest(
        order_id="o-1",
        channel=draw(st.sampled_from(projector.network.channels)),
        lines=lines,
        backorder=draw(st.booleans()),
    )
    return projector, {sku: draw(states(sku)) for sku in used}, order


@st.composite
def turns(draw: st.DrawFn) -> tuple[Projector, dict[str, SkuState], list[OrderRequest]]:
    projector = draw(projectors())
    skus = [f"s{i}" for i in range(draw(st.integers(1, 3)))]
    orders = []
    for o in range(draw(st.integers(1, 5))):
        lines = [
            OrderLine(
                line_id=str(i), sku=draw(st.sampled_from(skus)), quantity=draw(st.integers(1, 12))
            )
            for i in range(draw(st.integers(1, 3)))
        ]
        orders.append(
            OrderRequest(
                order_id=f"o-{o}",
                channel=draw(st.sampled_from(projector.network.channels)),
                lines=lines,
                backorder=draw(st.booleans()),
            )
        )
    used = list(dict.fromkeys(line.sku for order in orders for line in order.lines))
    return projector, {sku: draw(states(sku)) for sku in used}, orders


def one_after_another(
    orders: list[OrderRequest], sku_states: dict[str, SkuState], projector: Projector
) -> Planned:
    """Each order planned alone (vectorized engine) on the states the ones before it left.

    Orders planned together keep their arrival order in the backorder queue: the k-th
    one's backorders are placed k microseconds after the group's time."""
    current = dict(sku_states)
    results, held, event_ids, taken = [], [], {}, []
    for k, order in enumerate(orders):
        mine = {line.sku: current[line.sku] for line in order.lines}
        planned = plan([order], mine, projector, NOW_US, scalar=False)

        def placed(r: Any, k: int = k, mine: str = f"{order.order_id}:") -> Any:
            if not (r.placed_at and r.reservation_id.startswith(mine)):
                return r
            return msgspec.structs.replace(r, placed_at=r.placed_at + k)

        current.update(
            {s.sku: msgspec.structs.replace(s, reservations=tuple(map(placed, s.reservations)))
             for s in planned.states}
        )  # fmt: skip
        results += planned.results
        taken += planned.taken
        held += [list(map(placed, h)) for h in planned.held]
        for sku, ids in planned.event_ids.items():
            event_ids.setdefault(sku, []).extend(ids)
    changed = [current[sku] for sku in sku_states if current[sku] is not sku_states[sku]]
    return Planned(changed, results, held, event_ids, taken)


@EXAMPLES
@given(turns())
def test_orders_in_turn_equal_planning_them_one_after_another(
    case: tuple[Projector, dict[str, SkuState], list[OrderRequest]],
) -> None:
    projector, sku_states, orders = case
    assert plan_in_turn(orders, sku_states, projector, NOW_US) == one_after_another(
        orders, sku_states, projector
    )


@EXAMPLES
@given(cases())
def test_single_order_path_equals_vectorized_engine(
    case: tuple[Projector, dict[str, SkuState], OrderRequest],
) -> None:
    projector, sku_states, order = case
    assert plan([order], sku_states, projector, NOW_US, scalar=True) == plan(
        [order], sku_states, projector, NOW_US, scalar=False
    )


def test_single_order_path_is_the_default_and_refuses_what_the_engine_refuses() -> None:
    network = Network.of([Channel("web", 1, ("L0", "L1"), 0, 7)])
    projector = Projector(network, frozenset({"available"}), ({},))
    state = SkuState(
        "s0",
        bins=(BinStock("L0", "B", "available", 2), BinStock("L1", "B", "available", 5)),
        inbound=(InboundLine("i", "L1", 4, TODAY + 3, 0),),
    )
    order = OrderRequest(
        "o", "web", [OrderLine("1", "s0", 3), OrderLine("2", "s0", 8)], backorder=True
    )
    planned = plan([order], {"s0": state}, projector, NOW_US)
    assert planned == plan([order], {"s0": state}, projector, NOW_US, scalar=False)
    first, second = planned.results[0].lines
    assert [(a.location, a.quantity) for a in first.allocations] == [("L1", 3)]
    assert [(a.location, a.quantity) for a in second.allocations] == [("L0", 2), ("L1", 2)]
    assert (second.backordered, second.unfilled) == (4, 0)

    negative = SkuState("s0", bins=state.bins, safety_stock={"web": -1})
    for scalar in (True, False):
        with pytest.raises(ValueError, match="safety stock"):
            plan([order], {"s0": negative}, projector, NOW_US, scalar=scalar)
