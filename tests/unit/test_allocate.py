"""Worked examples of batch allocation (issue 3); each is also checked against the reference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from allocation.allocate import NONE, Allocation, allocate
from allocation.network import Network, Supply
from allocation.reference import allocate_reference
from tests.channels import Channel

TODAY = 20_000  # days since the epoch


WEB = Channel("web", 1, ("DC-EAST", "DC-WEST"), safety_stock=0)
MARKETPLACE = Channel("marketplace", 2, ("DC-EAST",), safety_stock=5, inbound_horizon_days=0)


def supply(
    network: Network,
    on_hand: dict[str, int],
    *,
    reserved: dict[str, int] | None = None,
    inbound: Sequence[tuple[str, int, int]] = (),
) -> Supply:
    """One sku: on hand / reserved by location name, inbound (location, quantity, eta)."""
    where = network.location_index()
    oh = np.zeros((1, len(where)), dtype=np.int64)
    res = np.zeros((1, len(where)), dtype=np.int64)
    for name, qty in on_hand.items():
        oh[0, where[name]] = qty
    for name, qty in (reserved or {}).items():
        res[0, where[name]] = qty
    return Supply(
        on_hand=oh,
        reserved=res,
        safety_stock=network.safety_stock[None, :].copy(),
        inbound_sku=np.zeros(len(inbound), dtype=np.int64),
        inbound_location=np.array([where[loc] for loc, _, _ in inbound], dtype=np.int64),
        inbound_quantity=np.array([qty for _, qty, _ in inbound], dtype=np.int64),
        inbound_eta=np.array([eta for _, _, eta in inbound], dtype=np.int64),
    )


def run(
    sup: Supply,
    network: Network,
    lines: Sequence[tuple[str, int, bool]],
) -> Allocation:
    """Allocate lines (channel name, quantity, backorder) of sku 0 with both engines."""
    args = (
        np.array([network.channel_index(c) for c, _, _ in lines], dtype=np.int64),
        np.zeros(len(lines), dtype=np.int64),
        np.array([q for _, q, _ in lines], dtype=np.int64),
        np.array([b for _, _, b in lines], dtype=np.bool_),
    )
    result = allocate(sup, network, TODAY, *args)
    expected = allocate_reference(sup, network, TODAY, *args)
    for field in (
        "taken",
        "backordered",
        "promise_day",
        "promise_location",
        "unfilled",
        "reserved",
    ):
        np.testing.assert_array_equal(getattr(result, field), getattr(expected, field), field)
    return result


def taken(network: Network, result: Allocation, line: int) -> dict[str, int]:
    return {network.locations[loc]: int(q) for loc, q in enumerate(result.taken[line]) if q}


def reserved(network: Network, result: Allocation) -> dict[str, int]:
    return {network.locations[loc]: int(q) for loc, q in enumerate(result.reserved[0]) if q}


class TestNestedSafetyStock:
    """The contract's example: 10 units at DC-EAST; marketplace keeps 5 back for web."""

    network = Network.of([WEB, MARKETPLACE])

    def test_marketplace_stops_at_its_safety_stock(self) -> None:
        result = run(
            supply(self.network, {"DC-EAST": 10}), self.network, [("marketplace", 8, False)]
        )
        assert taken(self.network, result, 0) == {"DC-EAST": 5}
        assert result.unfilled.tolist() == [3]
        assert reserved(self.network, result) == {"DC-EAST": 5}

    def test_web_sells_the_last_units_after_marketplace_stopped(self) -> None:
        first = run(
            supply(self.network, {"DC-EAST": 10}), self.network, [("marketplace", 8, False)]
        )
        after = replace(supply(self.network, {"DC-EAST": 10}), reserved=first.reserved)
        second = run(after, self.network, [("web", 10, False), ("marketplace", 1, False)])
        assert taken(self.network, second, 0) == {"DC-EAST": 5}
        assert second.unfilled.tolist() == [5, 1]
        assert reserved(self.network, second) == {"DC-EAST": 10}

    def test_marketplace_sees_what_web_took_earlier_in_the_batch(self) -> None:
        # Given in the opposite order: web (priority 1) goes first all the same.
        result = run(
            supply(self.network, {"DC-EAST": 10}),
            self.network,
            [("marketplace", 8, False), ("web", 4, False)],
        )
        assert taken(self.network, result, 1) == {"DC-EAST": 4}
        assert taken(self.network, result, 0) == {"DC-EAST": 1}  # 10 - 4 - 5
        assert result.unfilled.tolist() == [7, 0]

    def test_existing_reservations_count_against_net(self) -> None:
        sup = supply(self.network, {"DC-EAST": 10}, reserved={"DC-EAST": 3})
        result = run(sup, self.network, [("marketplace", 8, False)])
        assert taken(self.network, result, 0) == {"DC-EAST": 2}


class TestLocations:
    network = Network.of([Channel("web", 1, ("DC-A", "DC-B", "DC-C"))])

    def test_first_location_that_covers_the_whole_line(self) -> None:
        result = run(
            supply(self.network, {"DC-A": 3, "DC-B": 5, "DC-C": 9}),
            self.network,
            [("web", 2, False), ("web", 4, False), ("web", 1, False), ("web", 1, False)],
        )
        assert taken(self.network, result, 0) == {"DC-A": 2}
        assert taken(self.network, result, 1) == {"DC-B": 4}  # DC-A has 1 left
        assert taken(self.network, result, 2) == {"DC-A": 1}  # the first that covers
        assert taken(self.network, result, 3) == {"DC-B": 1}
        assert reserved(self.network, result) == {"DC-A": 3, "DC-B": 5}

    def test_split_in_location_order_when_none_covers(self) -> None:
        result = run(
            supply(self.network, {"DC-A": 3, "DC-B": 2, "DC-C": 4}),
            self.network,
            [("web", 7, False)],
        )
        assert taken(self.network, result, 0) == {"DC-A": 3, "DC-B": 2, "DC-C": 2}

    def test_preference_order_is_the_channels_not_the_networks(self) -> None:
        network = Network.of(
            [Channel("web", 1, ("DC-A", "DC-B")), Channel("store", 1, ("DC-B", "DC-A"))]
        )
        result = run(supply(network, {"DC-A": 5, "DC-B": 5}), network, [("store", 2, False)])
        assert taken(network, result, 0) == {"DC-B": 2}

    def test_negative_or_over_reserved_locations_hold_nothing_free(self) -> None:
        sup = supply(self.network, {"DC-A": -2, "DC-B": 4, "DC-C": 6}, reserved={"DC-B": 5})
        result = run(sup, self.network, [("web", 5, False)])
        # net = -2 + (4 - 5) + 6 = 3: only 3 may be sold, and only DC-C has them free.
        assert taken(self.network, result, 0) == {"DC-C": 3}
        assert result.unfilled.tolist() == [2]


class TestBackorder:
    network = Network.of([Channel("web", 1, ("DC-A", "DC-B"), inbound_horizon_days=14)])

    def test_promise_from_the_first_inbound_that_covers(self) -> None:
        sup = supply(
            self.network,
            {"DC-A": 2},
            inbound=[("DC-B", 5, TODAY + 3), ("DC-A", 10, TODAY + 7)],
        )
        result = run(sup, self.network, [("web", 6, True), ("web", 5, True)])
        assert taken(self.network, result, 0) == {"DC-A": 2}
        assert result.backordered.tolist() == [4, 5]
        # The first line's 4 are covered by the 5 due on day +3 at DC-B; the second needs
        # 4 + 5 = 9 > 5 of inbound, which only day +7 covers, at DC-A.
        assert result.promise_day.tolist() == [TODAY + 3, TODAY + 7]
        assert result.promise_location.tolist() == [
            self.network.location_index()["DC-B"],
            self.network.location_index()["DC-A"],
        ]
        assert result.unfilled.tolist() == [0, 0]
        assert reserved(self.network, result) == {"DC-A": 7, "DC-B": 4}

    def test_a_past_eta_counts_as_due_today(self) -> None:
        sup = supply(self.network, {}, inbound=[("DC-B", 5, TODAY - 4)])
        result = run(sup, self.network, [("web", 3, True)])
        assert result.promise_day.tolist() == [TODAY]

    def test_same_day_inbound_is_reserved_at_the_preferred_location(self) -> None:
        sup = supply(self.network, {}, inbound=[("DC-B", 5, TODAY + 2), ("DC-A", 1, TODAY + 2)])
        result = run(sup, self.network, [("web", 6, True)])
        assert result.promise_location.tolist() == [self.network.location_index()["DC-A"]]

    def test_beyond_the_horizon_is_unfilled(self) -> None:
        sup = supply(
            self.network,
            {"DC-A": 1},
            inbound=[("DC-A", 3, TODAY + 14), ("DC-B", 10, TODAY + 15)],
        )
        result = run(sup, self.network, [("web", 8, True)])
        assert taken(self.network, result, 0) == {"DC-A": 1}
        assert result.backordered.tolist() == [3]  # only the line due on the horizon's end
        assert result.promise_day.tolist() == [TODAY + 14]
        assert result.unfilled.tolist() == [4]

    def test_nothing_within_the_horizon(self) -> None:
        sup = supply(self.network, {}, inbound=[("DC-A", 10, TODAY + 30)])
        result = run(sup, self.network, [("web", 2, True)])
        assert result.backordered.tolist() == [0]
        assert result.promise_day.tolist() == [NONE]
        assert result.promise_location.tolist() == [NONE]
        assert result.unfilled.tolist() == [2]

    def test_without_backorder_the_rest_is_unfilled(self) -> None:
        sup = supply(self.network, {"DC-A": 1}, inbound=[("DC-A", 10, TODAY + 1)])
        result = run(sup, self.network, [("web", 4, False)])
        assert result.backordered.tolist() == [0]
        assert result.unfilled.tolist() == [3]

    def test_backorders_reduce_net_for_later_lines(self) -> None:
        # The backorder is reserved at DC-B beyond its on hand: a later line sees less net.
        sup = supply(self.network, {"DC-B": 4}, inbound=[("DC-A", 6, TODAY + 1)])
        result = run(sup, self.network, [("web", 10, True), ("web", 1, False)])
        assert taken(self.network, result, 0) == {"DC-B": 4}
        assert result.backordered.tolist() == [6, 0]
        assert result.unfilled.tolist() == [0, 1]

    def test_safety_stock_also_holds_back_inbound(self) -> None:
        network = Network.of([Channel("web", 1, ("DC-A",), safety_stock=3)])
        sup = supply(network, {"DC-A": 2}, inbound=[("DC-A", 5, TODAY + 1)])
        result = run(sup, network, [("web", 9, True)])
        # net 2 < safety 3: nothing from stock; atp at the end = 2 + 5 - 3 = 4.
        assert result.taken.sum() == 0
        assert result.backordered.tolist() == [4]
        assert result.unfilled.tolist() == [5]


class TestPriority:
    network = Network.of(
        [
            Channel("marketplace", 2, ("DC-A",)),
            Channel("web", 1, ("DC-A",)),
            Channel("b2b", 2, ("DC-A",)),
        ]
    )

    def test_higher_priority_first_then_in_the_order_given(self) -> None:
        result = run(
            supply(self.network, {"DC-A": 10}),
            self.network,
            [
                ("marketplace", 3, False),
                ("b2b", 4, False),
                ("web", 8, False),
                ("marketplace", 2, False),
            ],
        )
        # web takes 8; then marketplace and b2b interleaved as given: 2, 0, 0.
        assert result.taken.sum(axis=1).tolist() == [2, 0, 8, 0]
        assert result.unfilled.tolist() == [1, 4, 0, 2]


class TestShapes:
    network = Network.of([WEB, MARKETPLACE])

    def test_empty_batch(self) -> None:
        sup = supply(self.network, {"DC-EAST": 3}, reserved={"DC-EAST": 1})
        result = run(sup, self.network, [])
        assert result.taken.shape == (0, 2)
        assert result.unfilled.shape == (0,)
        np.testing.assert_array_equal(result.reserved, sup.reserved)

    def test_inputs_are_not_modified(self) -> None:
        sup = supply(self.network, {"DC-EAST": 3}, inbound=[("DC-EAST", 2, TODAY)])
        before = sup.reserved.copy()
        run(sup, self.network, [("web", 5, True)])
        np.testing.assert_array_equal(sup.reserved, before)

    def test_skus_are_independent(self) -> None:
        sup = Supply(
            on_hand=np.array([[4, 0], [1, 1]], dtype=np.int64),
            reserved=np.zeros((2, 2), dtype=np.int64),
            safety_stock=np.zeros((2, 2), dtype=np.int64),
            inbound_sku=np.zeros(0, dtype=np.int64),
            inbound_location=np.zeros(0, dtype=np.int64),
            inbound_quantity=np.zeros(0, dtype=np.int64),
            inbound_eta=np.zeros(0, dtype=np.int64),
        )
        args = (
            np.array([0, 0, 0], dtype=np.int64),
            np.array([1, 0, 1], dtype=np.int64),
            np.array([2, 3, 1], dtype=np.int64),
            np.zeros(3, dtype=np.bool_),
        )
        result = allocate(sup, self.network, TODAY, *args)
        assert result.taken.tolist() == [[1, 1], [3, 0], [0, 0]]
        assert result.unfilled.tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    ("quantity", "sku", "channel", "message"),
    [
        (0, 0, 0, "at least 1"),
        (1, 1, 0, "sku"),
        (1, 0, 2, "channel"),
    ],
)
def test_malformed_lines_are_rejected(quantity: int, sku: int, channel: int, message: str) -> None:
    network = Network.of([WEB, MARKETPLACE])
    sup = supply(network, {"DC-EAST": 1})
    args = (
        np.array([channel], dtype=np.int64),
        np.array([sku], dtype=np.int64),
        np.array([quantity], dtype=np.int64),
        np.array([False]),
    )
    with pytest.raises(ValueError, match=message):
        allocate(sup, network, TODAY, *args)
    with pytest.raises(ValueError, match=message):
        allocate_reference(sup, network, TODAY, *args)


def test_negative_safety_stock_is_rejected() -> None:
    network = Network.of([WEB])
    sup = replace(supply(network, {"DC-EAST": 1}), safety_stock=np.array([[-1]], dtype=np.int64))
    one = np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="safety stock"):
        allocate(sup, network, TODAY, one, one, one + 1, np.array([False]))
