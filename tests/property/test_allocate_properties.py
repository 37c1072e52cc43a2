"""Properties of batch allocation (issue 3): the vectorized engine equals the plain-Python
reference on every input, and the outcome keeps the contract's promises."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from allocation.allocate import NONE, Allocation, allocate
from allocation.network import NO_CAP, Network, Supply
from allocation.projection import available_to_sell
from allocation.reference import allocate_reference
from tests.channels import Channel
from tests.property.strategies import FIELDS, TODAY, Batch, ints, tuning

EXAMPLES = settings(max_examples=200, deadline=None)


@st.composite
def buffers(draw: st.DrawFn) -> dict[str, int | None]:
    """A channel's section 11 buffers: none half of the time (the vectorized runs)."""
    if draw(st.booleans()):
        return {}
    return {
        "min_available": draw(st.integers(0, 4)),
        "max_available": draw(st.none() | st.integers(0, 10)),
        "max_order_quantity": draw(st.none() | st.integers(1, 6)),
    }


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    names = [f"L{i}" for i in range(draw(st.integers(1, 4)))]
    channels = []
    for c in range(draw(st.integers(1, 3))):
        locations = draw(st.permutations(names))[: draw(st.integers(1, len(names)))]
        channels.append(
            Channel(
                name=f"c{c}",
                priority=draw(st.integers(1, 3)),
                locations=tuple(locations),
                safety_stock=0,
                inbound_horizon_days=draw(st.integers(0, 10)),
                **draw(buffers()),
            )
        )
    network = Network.of(channels)
    n_skus, n_locations, n_channels = draw(st.integers(1, 3)), len(network.locations), len(channels)
    n_inbound = draw(st.integers(0, 6))
    supply = Supply(
        on_hand=ints(draw, (n_skus, n_locations), -2, 12),
        reserved=ints(draw, (n_skus, n_locations), 0, 3),
        safety_stock=ints(draw, (n_skus, n_channels), 0, 3),
        inbound_sku=ints(draw, (n_inbound,), 0, n_skus - 1),
        inbound_location=ints(draw, (n_inbound,), 0, n_locations - 1),
        inbound_quantity=ints(draw, (n_inbound,), 0, 10),
        inbound_eta=ints(draw, (n_inbound,), TODAY - 3, TODAY + 15),
    )
    n_lines = draw(st.integers(0, 16))
    return Batch(
        supply=supply,
        network=network,
        channel=ints(draw, (n_lines,), 0, n_channels - 1),
        sku=ints(draw, (n_lines,), 0, n_skus - 1),
        quantity=ints(draw, (n_lines,), 1, 8),
        backorder=np.array(
            draw(st.lists(st.booleans(), min_size=n_lines, max_size=n_lines)), dtype=np.bool_
        ).reshape(n_lines),
    )


def processing_order(batch: Batch) -> list[int]:
    priority = batch.network.priority[batch.channel]
    return sorted(range(batch.quantity.size), key=lambda i: (int(priority[i]), i))


def due(batch: Batch, c: int, s: int) -> list[tuple[int, int, int]]:
    """(day due, location, quantity) of the inbound lines counting for channel c, sku s."""
    sup, network = batch.supply, batch.network
    return [
        (max(int(eta), TODAY), int(loc), int(qty))
        for sku, loc, qty, eta in zip(
            sup.inbound_sku,
            sup.inbound_location,
            sup.inbound_quantity,
            sup.inbound_eta,
            strict=True,
        )
        if sku == s and qty > 0 and network.mask[c, loc] and eta <= TODAY + network.horizon[c]
    ]


@given(batches(), st.sampled_from([(16, 256), (0, 256), (1, 1), (0, 1), (2, 2)]))
@EXAMPLES
def test_vectorized_equals_reference(batch: Batch, knobs: tuple[int, int]) -> None:
    expected = allocate_reference(batch.supply, batch.network, TODAY, *batch.lines())
    with tuning(*knobs):
        result = allocate(batch.supply, batch.network, TODAY, *batch.lines())
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(result, field), getattr(expected, field), field)
        assert getattr(result, field).dtype == np.int64


@given(batches())
@EXAMPLES
def test_every_unit_is_accounted_for(batch: Batch) -> None:
    result = allocate(batch.supply, batch.network, TODAY, *batch.lines())
    assert (result.taken >= 0).all() and (result.backordered >= 0).all()
    assert (result.unfilled >= 0).all()
    np.testing.assert_array_equal(
        result.taken.sum(axis=1) + result.backordered + result.unfilled, batch.quantity
    )
    assert (result.backordered[~batch.backorder] == 0).all()
    promised = result.backordered > 0
    np.testing.assert_array_equal(result.promise_day == NONE, ~promised)
    np.testing.assert_array_equal(result.promise_location == NONE, ~promised)
    # Stock only from the channel's own locations.
    assert not (result.taken * ~batch.network.mask[batch.channel]).any()
    # The resulting reserved is the input plus every reservation of the batch.
    added = np.zeros_like(batch.supply.reserved)
    np.add.at(added, batch.sku, result.taken)
    np.add.at(
        added,
        (batch.sku[promised], result.promise_location[promised]),
        result.backordered[promised],
    )
    np.testing.assert_array_equal(result.reserved, batch.supply.reserved + added)


@given(batches())
@EXAMPLES
def test_no_location_is_over_reserved(batch: Batch) -> None:
    result = allocate(batch.supply, batch.network, TODAY, *batch.lines())
    sup = batch.supply
    free_before = np.maximum(0, sup.on_hand - sup.reserved)
    from_stock = np.zeros_like(sup.reserved)
    np.add.at(from_stock, batch.sku, result.taken)
    assert (from_stock <= free_before).all()
    claimed = np.zeros_like(sup.reserved)
    promised = result.backordered > 0
    np.add.at(
        claimed,
        (batch.sku[promised], result.promise_location[promised]),
        result.backordered[promised],
    )
    assert (result.reserved <= np.maximum(sup.on_hand, sup.reserved) + claimed).all()


def replay(batch: Batch, result: Allocation) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Walk the lines in processing order, yielding (line, channel, sku, reserved before it)."""
    reserved = batch.supply.reserved.copy()
    for i in processing_order(batch):
        c, s = int(batch.channel[i]), int(batch.sku[i])
        yield i, c, s, reserved[s].copy()
        reserved[s] += result.taken[i]
        if result.backordered[i]:
            reserved[s, result.promise_location[i]] += result.backordered[i]


@given(batches())
@EXAMPLES
def test_no_channel_crosses_its_safety_stock(batch: Batch) -> None:
    result = allocate(batch.supply, batch.network, TODAY, *batch.lines())
    sup, mask = batch.supply, batch.network.mask
    for i, c, s, reserved in replay(batch, result):
        net = int(((sup.on_hand[s] - reserved) * mask[c]).sum())
        ss = int(sup.safety_stock[s, c])
        ats = int(available_to_sell(np.array([net]), np.array([ss]))[0])
        # With the channel's buffers (contract section 11): nothing offered while the value
        # is below min_available, never more than max_available, a line capped.
        network = batch.network
        offered = 0 if ats < network.min_available[c] else min(ats, network.max_available[c])
        wanted = min(int(batch.quantity[i]), int(network.max_order_quantity[c]))
        take = int(result.taken[i].sum())
        assert take == min(wanted, offered)
        if take:
            assert net - take >= ss  # available_to_sell after the take is >= 0


@given(batches())
@EXAMPLES
def test_promises_come_from_inbound_within_the_horizon(batch: Batch) -> None:
    result = allocate(batch.supply, batch.network, TODAY, *batch.lines())
    sup, network = batch.supply, batch.network
    for i, c, s, reserved in replay(batch, result):
        bo = int(result.backordered[i])
        if not bo:
            continue
        day, location = int(result.promise_day[i]), int(result.promise_location[i])
        lines = due(batch, c, s)
        assert TODAY <= day <= TODAY + network.horizon[c]
        assert day >= min(d for d, _, _ in lines)
        # Inbound due by the promise date covers the backorder; not so the day before.
        by = {d: sum(q for dd, _, q in lines if dd <= d) for d, _, _ in lines}
        # (A take held back by the channel's buffers may leave stock for its backorder.)
        if network.max_available[c] == NO_CAP and network.min_available[c] == 0:
            assert by[day] >= bo
            assert day >= min(d for d in by if by[d] >= bo)
        # atp after the take: covers on the promise date, not on any earlier due date.
        net_after = int(((sup.on_hand[s] - reserved) * network.mask[c]).sum()) - int(
            result.taken[i].sum()
        )
        ss = int(sup.safety_stock[s, c])

        def atp(d: int) -> int:  # with the channel's buffers (contract section 11)
            value = max(0, net_after + by[d] - ss)  # noqa: B023
            low, high = network.min_available[c], network.max_available[c]  # noqa: B023
            return 0 if value < low else min(value, high)

        assert atp(day) >= bo
        assert all(atp(d) < bo for d in by if d < day)
        # Reserved at the preferred location with a line due that day.
        here = [loc for d, loc, _ in lines if d == day]
        assert location == min(here, key=lambda loc: network.rank[c, loc])


@given(batches(), st.data())
@EXAMPLES
def test_a_lower_priority_line_never_costs_a_higher_one(batch: Batch, data: st.DataObject) -> None:
    if not batch.quantity.size:
        return
    removed = data.draw(st.integers(0, batch.quantity.size - 1))
    full = allocate(batch.supply, batch.network, TODAY, *batch.lines())
    smaller = batch.without(removed)
    part = allocate(smaller.supply, smaller.network, TODAY, *smaller.lines())
    order = processing_order(batch)
    earlier = order[: order.index(removed)]  # every line of higher priority, and more
    for i in earlier:
        j = i if i < removed else i - 1
        got_full = full.taken[i].sum() + full.backordered[i]
        got_part = part.taken[j].sum() + part.backordered[j]
        assert got_part >= got_full
        np.testing.assert_array_equal(part.taken[j], full.taken[i])
        assert part.promise_day[j] == full.promise_day[i]


@given(batches())
@EXAMPLES
def test_a_line_takes_no_more_than_its_channels_order_cap(batch: Batch) -> None:
    result = allocate(batch.supply, batch.network, TODAY, *batch.lines())
    cap = batch.network.max_order_quantity[batch.channel]
    assert (result.taken.sum(axis=1) + result.backordered <= cap).all()
