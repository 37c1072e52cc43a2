"""The vectorized engine equals the reference on batches where every channel has buffers
(contract section 11): long runs of one channel on one sku, lines above max_available that
backorder their rest while stock remains, and stock that min_available holds back."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from allocation.allocate import allocate
from allocation.network import Network, Supply
from allocation.reference import allocate_reference
from tests.channels import Channel
from tests.property.strategies import FIELDS, TODAY, Batch, ints, tuning

EXAMPLES = settings(max_examples=300, deadline=None)


@st.composite
def buffered_batches(draw: st.DrawFn) -> Batch:
    names = [f"L{i}" for i in range(draw(st.integers(1, 3)))]
    channels = [
        Channel(
            name=f"c{c}",
            priority=draw(st.integers(1, 2)),
            locations=tuple(draw(st.permutations(names))[: draw(st.integers(1, len(names)))]),
            safety_stock=0,
            inbound_horizon_days=draw(st.integers(0, 10)),
            min_available=draw(st.integers(0, 5)),
            max_available=draw(st.none() | st.integers(0, 6)),
            max_order_quantity=draw(st.none() | st.integers(1, 9)),
        )
        for c in range(draw(st.integers(1, 2)))
    ]
    network = Network.of(channels)
    n_skus, n_locations, n_channels = draw(st.integers(1, 2)), len(network.locations), len(channels)
    n_inbound = draw(st.integers(0, 6))
    supply = Supply(
        on_hand=ints(draw, (n_skus, n_locations), -2, 30),
        reserved=ints(draw, (n_skus, n_locations), 0, 3),
        safety_stock=ints(draw, (n_skus, n_channels), 0, 3),
        inbound_sku=ints(draw, (n_inbound,), 0, n_skus - 1),
        inbound_location=ints(draw, (n_inbound,), 0, n_locations - 1),
        inbound_quantity=ints(draw, (n_inbound,), 0, 15),
        inbound_eta=ints(draw, (n_inbound,), TODAY - 3, TODAY + 15),
    )
    n_lines = draw(st.integers(0, 30))
    return Batch(
        supply=supply,
        network=network,
        channel=ints(draw, (n_lines,), 0, n_channels - 1),
        sku=ints(draw, (n_lines,), 0, n_skus - 1),
        quantity=ints(draw, (n_lines,), 1, 10),
        backorder=np.array(
            draw(
                st.lists(st.sampled_from([True, True, False]), min_size=n_lines, max_size=n_lines)
            ),
            dtype=np.bool_,
        ).reshape(n_lines),
    )


@given(buffered_batches(), st.sampled_from([(16, 256), (0, 256), (1, 1), (0, 1), (2, 2)]))
@EXAMPLES
def test_vectorized_equals_reference_with_buffers(batch: Batch, knobs: tuple[int, int]) -> None:
    expected = allocate_reference(batch.supply, batch.network, TODAY, *batch.lines())
    with tuning(*knobs):
        result = allocate(batch.supply, batch.network, TODAY, *batch.lines())
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(result, field), getattr(expected, field), field)


def test_a_line_over_max_available_backorders_before_the_next_takes() -> None:
    """Line 0 takes max_available from L0 and backorders its rest at L0 (its inbound); that
    reservation leaves L0 short for line 1, which takes from L1."""
    network = Network.of(
        [Channel("c0", 1, ("L0", "L1"), 0, 10, max_available=4, max_order_quantity=None)]
    )
    supply = Supply(
        on_hand=np.array([[6, 9]]),
        reserved=np.zeros((1, 2), dtype=np.int64),
        safety_stock=np.zeros((1, 1), dtype=np.int64),
        inbound_sku=np.array([0]),
        inbound_location=np.array([0]),
        inbound_quantity=np.array([5]),
        inbound_eta=np.array([TODAY + 3]),
    )
    lines = (np.array([0, 0]), np.array([0, 0]), np.array([7, 2]), np.array([True, False]))
    result = allocate(supply, network, TODAY, *lines)
    expected = allocate_reference(supply, network, TODAY, *lines)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(result, field), getattr(expected, field), field)
    np.testing.assert_array_equal(result.taken, [[4, 0], [0, 2]])
    np.testing.assert_array_equal(result.backordered, [3, 0])
    assert result.promise_day[0] == TODAY + 3 and result.promise_location[0] == 0
