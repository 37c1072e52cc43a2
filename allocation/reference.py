"""Batch allocation written as plain Python loops: the oracle the vectorized engine is tested against.

It follows the rules of ``allocation.allocate`` one line at a time, in the most direct way,
and favours obviousness over speed. Same signature and output type as
``allocation.allocate.allocate``.
"""

from __future__ import annotations

import numpy as np

from allocation.allocate import NONE, Allocation, check_lines
from allocation.network import NO_CAP, Bools, Ints, Network, Supply
from allocation.projection import available_to_sell, offer


def allocate_reference(
    supply: Supply,
    network: Network,
    today: int,
    line_channel: Ints,
    line_sku: Ints,
    line_quantity: Ints,
    line_backorder: Bools,
) -> Allocation:
    """Allocate a batch of order lines one by one (see ``allocation.allocate.allocate``)."""
    check_lines(supply, network, line_channel, line_sku, line_quantity, line_backorder)
    n_lines = len(line_quantity)
    n_locations = len(network.locations)
    on_hand: list[list[int]] = supply.on_hand.tolist()
    reserved: list[list[int]] = supply.reserved.tolist()
    safety_stock: list[list[int]] = supply.safety_stock.tolist()

    # Each channel's locations, in its preference order.
    channel_locations: list[list[int]] = []
    for ranks in network.rank.tolist():
        in_network = [loc for loc in range(n_locations) if ranks[loc] >= 0]
        channel_locations.append(sorted(in_network, key=ranks.__getitem__))

    # The open inbound lines of each sku: (location, quantity, eta).
    inbound: dict[int, list[tuple[int, int, int]]] = {}
    for sku, location, quantity, eta in zip(
        supply.inbound_sku.tolist(),
        supply.inbound_location.tolist(),
        supply.inbound_quantity.tolist(),
        supply.inbound_eta.tolist(),
        strict=True,
    ):
        if quantity > 0:
            inbound.setdefault(sku, []).append((location, quantity, eta))

    taken = [[0] * n_locations for _ in range(n_lines)]
    backordered = [0] * n_lines
    promise_day = [NONE] * n_lines
    promise_location = [NONE] * n_lines
    unfilled = [0] * n_lines

    priority = network.priority.tolist()
    low, high = network.min_available.tolist(), network.max_available.tolist()
    cap = network.max_order_quantity.tolist()
    channels, skus = line_channel.tolist(), line_sku.tolist()
    quantities, backorders = line_quantity.tolist(), line_backorder.tolist()
    # Higher priority (lower number) first, then in the order given.
    for i in sorted(range(n_lines), key=lambda i: (priority[channels[i]], i)):
        c, s, quantity = channels[i], skus[i], quantities[i]
        locations = channel_locations[c]
        ss = safety_stock[s][c]
        wanted = min(quantity, cap[c])  # the channel's order cap; the rest is unfilled

        # Take from stock what available_to_sell (with the channel's buffers) allows.
        net = sum(on_hand[s][loc] - reserved[s][loc] for loc in locations)
        ats = offer(int(available_to_sell(np.array([net]), np.array([ss]))[0]), low[c], high[c])
        take = min(wanted, ats)
        free = {loc: max(0, on_hand[s][loc] - reserved[s][loc]) for loc in locations}
        assert take <= sum(free.values())
        if take > 0:
            whole = [loc for loc in locations if free[loc] >= take]
            if whole:
                taken[i][whole[0]] = take
            else:
                remaining = take
                for loc in locations:
                    part = min(free[loc], remaining)
                    taken[i][loc] = part
                    remaining -= part
                assert remaining == 0
            for loc in locations:
                reserved[s][loc] += taken[i][loc]
        rest = wanted - take
        if not backorders[i] or rest == 0:
            unfilled[i] = quantity - take
            continue

        # Promise the rest from inbound: atp(c,s,d) after this line's take.
        net_after = net - take
        horizon_end = today + int(network.horizon[c])
        due: list[tuple[int, int, int]] = []  # (day due, location, quantity)
        for location, qty, eta in inbound.get(s, []):
            if location in locations and eta <= horizon_end:
                due.append((max(eta, today), location, qty))

        def atp(d: int) -> int:
            return offer(_atp(net_after, ss, due, d), low[c], high[c])  # noqa: B023

        # The rest exhausted available_to_sell, so atp before any inbound is 0 (unless the
        # channel's max_available capped the take): backordered units are covered by some
        # inbound line, promised on the first due date whose atp covers them.
        assert atp(today - 1) == 0 or high[c] < NO_CAP
        bo = min(rest, atp(horizon_end)) if due else 0
        if bo > 0:
            days = sorted({day for day, _, _ in due})
            day = next(d for d in days if atp(d) >= bo)
            here = [loc for d, loc, _ in due if d == day]
            location = min(here, key=lambda loc: int(network.rank[c, loc]))
            reserved[s][location] += bo
            backordered[i], promise_day[i], promise_location[i] = bo, day, location
        unfilled[i] = quantity - take - bo

    return Allocation(
        taken=np.array(taken, dtype=np.int64).reshape(n_lines, n_locations),
        backordered=np.array(backordered, dtype=np.int64),
        promise_day=np.array(promise_day, dtype=np.int64),
        promise_location=np.array(promise_location, dtype=np.int64),
        unfilled=np.array(unfilled, dtype=np.int64),
        reserved=np.array(reserved, dtype=np.int64).reshape(supply.reserved.shape),
    )


def _atp(net_after: int, ss: int, due: list[tuple[int, int, int]], d: int) -> int:
    """atp(c,s,d) = max(0, net + inbound due by d - safety_stock)."""
    return max(0, net_after + sum(qty for day, _, qty in due if day <= d) - ss)
