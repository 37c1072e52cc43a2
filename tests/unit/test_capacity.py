"""Location capacity (contract section 11) in allocation and in backorders converted."""

from __future__ import annotations

from allocation.kits import KitComponent, KitDefinition
from allocation.network import NO_CAP, Network
from atp_service.orders import OrderLine, OrderRequest, plan, plan_in_turn
from streams.backorders import build_replanned
from streams.projector import Projector
from streams.state import US_PER_DAY, BinStock, Reservation, SkuState
from tests.channels import Channel

NOW_US = 20_000 * US_PER_DAY + 3_600_000_000
PROJECTOR = Projector(
    Network.of([Channel("web", 1, ("L1", "L2"), 0, 14)]),
    frozenset({"available"}),
    ({},),
    capacities={"L1": 5},
)


def stock(sku: str, *where: tuple[str, int], **kw: object) -> SkuState:
    bins = tuple(BinStock(loc, "X", "available", q) for loc, q in where)
    return SkuState(sku, bins=bins, **kw)  # type: ignore[arg-type]


def order(order_id: str, backorder: bool = False, **lines: int) -> OrderRequest:
    return OrderRequest(
        order_id,
        "web",
        [OrderLine(str(i), sku, q) for i, (sku, q) in enumerate(lines.items())],
        backorder,
    )


def test_room_is_what_a_location_may_still_give_today() -> None:
    assert PROJECTOR.room({"L1": 2}) == [3, NO_CAP]
    assert PROJECTOR.room({"L1": 9}) == [0, NO_CAP]
    no_capacity = Projector(PROJECTOR.network, PROJECTOR.sellable, ({},))
    assert no_capacity.room({}) is None


def test_lines_take_within_the_room_and_count_what_they_took() -> None:
    states = {"A": stock("A", ("L1", 20), ("L2", 2)), "B": stock("B", ("L1", 20))}
    room = PROJECTOR.room({"L1": 1})  # 4 left at L1 today
    planned = plan_in_turn([order("o1", A=3), order("o2", A=3, B=3)], states, PROJECTOR, NOW_US,
                           room=room)  # fmt: skip
    first, second = planned.results
    assert [(a.location, a.quantity) for a in first.lines[0].allocations] == [("L1", 3)]
    # L1 has 1 left: A takes it and L2's 2; B gets nothing though L1 holds 20 of it.
    assert [(a.location, a.quantity) for a in second.lines[0].allocations] == [("L1", 1), ("L2", 2)]
    assert second.lines[1].allocations == [] and second.lines[1].unfilled == 3
    assert PROJECTOR.capacity_taken(planned.taken) == {"L1": 4}
    # The batch path honours it the same way.
    batch = plan([order("o1", A=3), order("o2", A=3, B=3)], states, PROJECTOR, NOW_US, room=room)
    assert PROJECTOR.capacity_taken(batch.taken) == {"L1": 4}


def test_kit_components_share_a_locations_room() -> None:
    kit = KitDefinition("K", (KitComponent("A", 2), KitComponent("B", 1)))
    states = {"A": stock("A", ("L1", 20)), "B": stock("B", ("L1", 20))}
    # Each alone could make 5 kits within L1's room of 5; together 3 units a kit: 1 kit.
    planned = plan([order("o1", K=4)], states, PROJECTOR, NOW_US, kits={"K": kit},
                   room=PROJECTOR.room({}))  # fmt: skip
    [line] = planned.results[0].lines
    assert line.unfilled == 3
    assert PROJECTOR.capacity_taken(planned.taken) == {"L1": 3}


def test_backorders_converted_count_and_stop_at_the_room() -> None:
    claim = Reservation("o1:1:L1:backorder", True, "web", "L1", 8, placed_at=1, promise_day=0)
    state = stock("A", ("L1", 12), reservations=(claim,))
    changes, replanned = build_replanned(
        [state], {}, PROJECTOR, NOW_US, 7 * US_PER_DAY, room=PROJECTOR.room({"L1": 2})
    )
    assert changes.capacity == {"L1": (3, 5)}
    assert changes.capacity_day == NOW_US // US_PER_DAY
    claims = [r for r in replanned.states["A"].reservations if r.is_backorder and not r.released]
    assert [r.quantity for r in claims] == [5]
    # Capacity comes back tomorrow: the sku is due then, to plan its claims again.
    tomorrow_ms = (NOW_US // US_PER_DAY + 1) * US_PER_DAY // 1000
    assert changes.skus[0].due_ms == tomorrow_ms


def test_a_kit_line_takes_the_most_whole_kits_a_shared_capacity_allows() -> None:
    kit = KitDefinition("K", (KitComponent("A", 1), KitComponent("B", 1)))
    states = {"A": stock("A", ("L1", 20)), "B": stock("B", ("L1", 20))}
    # L1 may give 4 today: each component alone allows 3 kits, together 2 (4 units).
    planned = plan([order("o1", K=3)], states, PROJECTOR, NOW_US, kits={"K": kit},
                   room=PROJECTOR.room({"L1": 1}))  # fmt: skip
    [line] = planned.results[0].lines
    assert line.unfilled == 1
    assert PROJECTOR.capacity_taken(planned.taken) == {"L1": 4}


def test_a_batch_within_the_room_is_the_engines_answer_and_counted() -> None:
    states = {"A": stock("A", ("L1", 3), ("L2", 9)), "B": stock("B", ("L1", 1), ("L2", 9))}
    batch = [order("o1", A=2), order("o2", B=2), order("o3", A=3)]
    free = plan(batch, states, PROJECTOR, NOW_US)
    roomy = plan(batch, states, PROJECTOR, NOW_US, room=PROJECTOR.room({}))
    assert roomy.results == free.results
    assert PROJECTOR.capacity_taken(roomy.taken) == PROJECTOR.capacity_taken(free.taken)
    assert PROJECTOR.capacity_taken(roomy.taken)["L1"] <= 5
