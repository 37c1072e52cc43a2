"""Kit lines (contract section 10), for any stock, buffers, capacity and mix of orders:
whole kits only, never part of one, never beyond what the channel offers of every
component, never beyond a location's capacity, and as many kits as all of that allows."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from allocation.in_turn import take_from
from allocation.kits import KitComponent, KitDefinition
from allocation.network import NO_CAP, Network
from allocation.projection import offer
from atp_service.orders import OrderLine, OrderRequest, plan_in_turn
from streams.projector import Projector
from streams.state import US_PER_DAY, BinStock, SkuState
from tests.channels import Channel

NOW_US = 20_000 * US_PER_DAY
EXAMPLES = settings(max_examples=300, deadline=None)
LOCATIONS = ("L0", "L1", "L2")
SKUS = ("A", "B", "C")


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Projector, dict[str, SkuState], KitDefinition]:
    channels = [
        Channel(
            f"c{c}", c + 1,
            tuple(draw(st.permutations(LOCATIONS))[: draw(st.integers(1, len(LOCATIONS)))]),
            draw(st.integers(0, 3)), 7,
            min_available=draw(st.integers(0, 3)),
            max_available=draw(st.one_of(st.none(), st.integers(0, 20))),
            max_order_quantity=draw(st.one_of(st.none(), st.integers(1, 6))),
        )
        for c in range(2)
    ]  # fmt: skip
    capacities = draw(st.dictionaries(st.sampled_from(LOCATIONS), st.integers(0, 25)))
    projector = Projector(Network.of(channels), frozenset({"available"}), ({}, {}), capacities)
    states = {
        sku: SkuState(sku, bins=tuple(
            BinStock(loc, "X", "available", draw(st.integers(-2, 15))) for loc in LOCATIONS
        ))
        for sku in SKUS
    }  # fmt: skip
    parts = draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True))
    kit = KitDefinition("K", tuple(KitComponent(s, draw(st.integers(1, 3))) for s in parts))
    return projector, states, kit


@dataclass(frozen=True)
class Limits:
    """A channel's limits on one kit line: its locations in order, safety stock, buffers."""

    network: Network
    where: list[str]
    safety: int
    low: int
    high: int

    def fit(
        self, k: int, kit: KitDefinition, free: dict[str, dict[str, int]], left: dict[str, int]
    ) -> bool:
        """Whether k kits fit, each component taken from the channel's locations as any
        line takes (``take_from``), within the capacity left."""
        names = list(self.network.locations)
        room_left = [left[loc] for loc in names]
        order = [names.index(loc) for loc in self.where]
        for part in kit.components:
            stock = [free[part.sku].get(loc, 0) for loc in names]
            net = sum(free[part.sku][loc] for loc in self.where)
            if k * part.quantity > offer(max(0, net - self.safety), self.low, self.high):
                return False
            got = take_from(stock, order, k * part.quantity, len(stock), room_left)
            if sum(got) != k * part.quantity:
                return False
        return True


orders = st.lists(
    st.tuples(
        st.sampled_from(["c0", "c1"]),
        st.lists(st.tuples(st.sampled_from(["K", *SKUS]), st.integers(1, 8)), min_size=1,
                 max_size=3),
    ),
    min_size=1,
    max_size=4,
)  # fmt: skip


@EXAMPLES
@given(worlds(), orders, st.dictionaries(st.sampled_from(LOCATIONS), st.integers(0, 10)))
def test_kit_lines_take_whole_kits_within_every_limit(
    world: tuple[Projector, dict[str, SkuState], KitDefinition],
    drawn: list[tuple[str, list[tuple[str, int]]]],
    used: dict[str, int],
) -> None:
    projector, states, kit = world
    network = projector.network
    requests = [
        OrderRequest(f"o{n}", channel, [OrderLine(str(i), sku, q) for i, (sku, q) in enumerate(lines)])
        for n, (channel, lines) in enumerate(drawn)
    ]  # fmt: skip
    room = projector.room(used)
    planned = plan_in_turn(requests, states, projector, NOW_US, {"K": kit}, room)

    # Replay the plan line by line on the stock, checking each kit line against what was left.
    free = {s: dict.fromkeys(LOCATIONS, 0) for s in SKUS}
    for s, state in states.items():
        for b in state.bins:
            free[s][b.location] += b.quantity
    left = dict(zip(network.locations, room or [NO_CAP] * len(network.locations), strict=True))
    for request, result in zip(requests, planned.results, strict=True):
        c = network.channel_index(request.channel)
        where = [network.locations[i] for i in sorted(
            (i for i, r in enumerate(network.rank[c].tolist()) if r >= 0),
            key=lambda i: network.rank[c][i])]  # fmt: skip
        low, high = int(network.min_available[c]), int(network.max_available[c])
        cap, safety = int(network.max_order_quantity[c]), int(network.safety_stock[c])
        for line in result.lines:
            if line.components is None:
                for a in line.allocations:
                    free[line.sku][a.location] -= a.quantity
                    left[a.location] -= a.quantity
                continue
            kits = line.quantity - line.unfilled
            assert line.allocations == [] and line.backordered == 0 and kits >= 0
            assert kits <= min(line.quantity, cap)
            for part, c_result in zip(kit.components, line.components, strict=True):
                took = sum(a.quantity for a in c_result.allocations)
                assert took == kits * part.quantity  # whole kits, every component
                net = sum(free[part.sku][loc] for loc in where)
                assert took <= offer(max(0, net - safety), low, high)

            # As many kits as every limit allows: one more would break one of them.
            limits = Limits(network, where, safety, low, high)
            assert limits.fit(kits, kit, free, left)
            assert kits == min(line.quantity, cap) or not limits.fit(kits + 1, kit, free, left)
            for c_result in line.components:
                for a in c_result.allocations:
                    assert a.location in where
                    free[c_result.sku][a.location] -= a.quantity
                    left[a.location] -= a.quantity
                    assert left[a.location] >= 0  # never beyond a location's capacity
