"""Backorders planned again on the supply of now (contract section 9), one sku at a time.

A backorder is a claim: units of an order line reserved at a location ahead of stock. When
the supply of its sku changes, every open claim of the sku is planned again from scratch,
in queue order (channel priority, then the time its order was first allocated):

- stock first: what the channel's available_to_sell now allows is taken from stock, with
  the allocation rules of section 4 (``in_turn.take_from``);
- the rest is promised from inbound: the earliest day whose atp covers all of it, reserved
  at the location of the inbound line due that day;
- a rest that nothing within the horizon covers keeps its claim where it is, with no
  promise day: it stays ahead of the claims behind it in the queue.

Each claim works on what the claims before it left, so the plan is a function of the
supply without any claim and of the queue, whatever order the changes came in.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from allocation.in_turn import Timelines, can_give, preferred, take_from
from allocation.network import NONE, Network, Supply
from allocation.projection import offer


# msgspec structs, not frozen dataclasses: a re-plan makes one of each per claim, and a frozen
# dataclass's __init__ costs several times as much.
class Claim(msgspec.Struct, frozen=True):
    channel: int  # index into the network's channels
    quantity: int  # open backordered units
    location: int  # where it is reserved now (index into the network's locations)


class ClaimPlan(msgspec.Struct, frozen=True):
    taken: list[int]  # per network location: units now taken from stock
    backordered: int  # units still claimed
    promise_day: int  # NONE when nothing within the horizon covers them
    location: int  # where the backordered units are reserved (the claim's own if NONE)


class Planner:
    """Plans the claims of many skus on one ``supply`` (row s: a sku without its claims)."""

    def __init__(
        self, supply: Supply, network: Network, today: int, capacity: Sequence[int] | None = None
    ) -> None:
        """``capacity``: per network location, the units it may still give today, shared by
        every sku planned here (allocation.in_turn.allocate_in_turn says the same)."""
        self.room = list(capacity) if capacity is not None else None
        self.held_back: set[int] = set()  # rows that a location's capacity held back
        self.supply = supply
        self.network = network
        self.by_preference = preferred(network)
        self.timelines = Timelines(supply, network, today, self.by_preference)
        self.unreserved: list[list[int]] = (supply.on_hand - supply.reserved).tolist()
        self.safety: list[list[int]] = supply.safety_stock.tolist()
        self.low: list[int] = network.min_available.tolist()
        self.high: list[int] = network.max_available.tolist()

    def plan(self, row: int, claims: Sequence[Claim]) -> list[ClaimPlan]:
        """Plan ``claims`` (in queue order) of the sku in ``row``."""
        free, safety = self.unreserved[row], self.safety[row]
        low, high, room = self.low, self.high, self.room
        n_locations = len(self.network.locations)
        plans = []
        for claim in claims:
            c = claim.channel
            locations, ss = self.by_preference[c], safety[c]
            net = sum([free[loc] for loc in locations])
            allowed = min(claim.quantity, offer(max(0, net - ss), low[c], high[c]))
            take = allowed if room is None else min(allowed, can_give(free, locations, room))
            if take < allowed:
                self.held_back.add(row)
            taken = take_from(free, locations, take, n_locations, room)
            rest = claim.quantity - take
            day, where = NONE, claim.location
            if rest > 0:
                head = net - take - ss  # atp(c,s,d) = offer(max(0, head + inbound due by d))
                covering = [
                    (d, loc)
                    for d, total, loc in self.timelines.due(c, row)
                    if offer(max(0, head + total), low[c], high[c]) >= rest
                ]
                if covering:
                    day, where = covering[0]
                free[where] -= rest
            plans.append(ClaimPlan(taken, rest, day, where))
        return plans
