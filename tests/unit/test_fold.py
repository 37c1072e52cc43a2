"""The fold, rule by rule (contract section 2), observed through the projection it feeds.

Each case folds a few events of SKU-1 and checks the per-channel figures of the test
channels (web: DC-EAST + DC-WEST, safety stock 0; marketplace: DC-EAST, safety stock 5).
STORE-9 is a location outside every channel's network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from atp_service.config import Settings
from atp_service.model import projector_for
from streams.events import (
    AnyEvent,
    BinCount,
    BinMovement,
    Inbound,
    ReservationCreated,
    ReservationReleased,
    SnapshotBin,
    StockSnapshot,
)
from streams.fold import FoldResult, fold
from streams.projector import Projector
from streams.state import SkuState, to_us

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
TODAY = T0.date()
NOW_US = to_us(T0 + timedelta(hours=4))  # after every event below
WINDOW_US = 7 * 86_400_000_000
SKU = "SKU-1"


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


# -- event builders -----------------------------------------------------------------------


def receive(
    eid: str,
    qty: int,
    *,
    m: int = 0,
    loc: str = "DC-EAST",
    bin: str = "A",
    status: str = "available",
    sku: str = SKU,
) -> BinMovement:
    return BinMovement(
        event_id=eid,
        occurred_at=at(m),
        sku=sku,
        location=loc,
        quantity=qty,
        to_bin=bin,
        to_status=status,
    )


def ship(
    eid: str,
    qty: int,
    *,
    m: int = 0,
    loc: str = "DC-EAST",
    bin: str = "A",
    status: str = "available",
    rid: str | None = None,
    sku: str = SKU,
) -> BinMovement:
    return BinMovement(
        event_id=eid,
        occurred_at=at(m),
        sku=sku,
        location=loc,
        quantity=qty,
        from_bin=bin,
        from_status=status,
        reservation_id=rid,
    )


def move(
    eid: str,
    qty: int,
    src: tuple[str, str],
    dst: tuple[str, str],
    *,
    m: int = 0,
    loc: str = "DC-EAST",
    rid: str | None = None,
) -> BinMovement:
    return BinMovement(
        event_id=eid,
        occurred_at=at(m),
        sku=SKU,
        location=loc,
        quantity=qty,
        from_bin=src[0],
        from_status=src[1],
        to_bin=dst[0],
        to_status=dst[1],
        reservation_id=rid,
    )


def count(
    eid: str, qty: int, *, m: int, loc: str = "DC-EAST", bin: str = "A", status: str = "available"
) -> BinCount:
    return BinCount(
        event_id=eid, occurred_at=at(m), sku=SKU, location=loc, bin=bin, status=status, quantity=qty
    )


def snapshot(eid: str, bins: dict[str, int], *, m: int, loc: str = "DC-EAST") -> StockSnapshot:
    """The whole stock of SKU at ``loc``: bin -> quantity, all "available"."""
    listed = [SnapshotBin(bin_, "available", q) for bin_, q in bins.items()]
    return StockSnapshot(event_id=eid, occurred_at=at(m), sku=SKU, location=loc, bins=listed)


def create(
    eid: str,
    rid: str,
    qty: int,
    *,
    m: int = 1,
    loc: str = "DC-EAST",
    channel: str = "web",
    expires_m: int | None = None,
    sku: str = SKU,
) -> ReservationCreated:
    return ReservationCreated(
        event_id=eid,
        occurred_at=at(m),
        sku=sku,
        reservation_id=rid,
        channel=channel,
        location=loc,
        quantity=qty,
        expires_at=None if expires_m is None else at(expires_m),
    )


def release(eid: str, rid: str, *, m: int = 2, sku: str = SKU) -> ReservationReleased:
    return ReservationReleased(event_id=eid, occurred_at=at(m), sku=sku, reservation_id=rid)


def inbound(
    eid: str, iid: str, qty: int, *, eta: int = 3, m: int = 0, loc: str = "DC-EAST"
) -> Inbound:
    return Inbound(
        event_id=eid,
        occurred_at=at(m),
        sku=SKU,
        inbound_id=iid,
        location=loc,
        quantity=qty,
        eta=TODAY + timedelta(days=eta),
    )


def day(offset: int) -> str:
    return (TODAY + timedelta(days=offset)).isoformat()


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def projector(test_settings: Settings) -> Projector:
    return projector_for(test_settings)


def run(
    events: Sequence[AnyEvent],
    *,
    states: Mapping[str, SkuState] | None = None,
    seen: frozenset[str] = frozenset(),
) -> FoldResult:
    return fold(states or {}, events, seen=seen, now_us=NOW_US, window_us=WINDOW_US)


def view(
    projector: Projector,
    states: Mapping[str, SkuState],
    now_us: int = NOW_US,
    skus: Sequence[str] = (SKU,),
) -> dict[tuple[str, str], dict[str, Any]]:
    chosen = [states.get(sku) or SkuState(sku=sku) for sku in skus]
    rendered = projector.render(chosen, now_us)
    out = {}
    for sku, per_channel in rendered.documents.items():
        for channel, raw in per_channel.items():
            doc = msgspec.json.decode(raw)
            doc.pop("as_of")
            out[(channel, sku)] = doc
    return out


def canonical(states: Mapping[str, SkuState]) -> dict[str, tuple[Any, ...]]:
    """SkuStates compared without regard to the order of their tuples."""
    return {
        sku: (
            sorted(msgspec.structs.astuple(b) for b in s.bins),
            sorted(msgspec.structs.astuple(r) for r in s.reservations),
            sorted(msgspec.structs.astuple(i) for i in s.inbound),
            s.safety_stock,
            s.last_ats,
        )
        for sku, s in states.items()
    }


def figures(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("on_hand", "reserved", "available_to_sell", "atp")}


def both(
    web: tuple[int, int, int],
    market: tuple[int, int, int],
    web_atp: list[tuple[str, int]] | None = None,
    market_atp: list[tuple[str, int]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Expected (on_hand, reserved, available_to_sell) and atp of web and marketplace."""

    def one(f: tuple[int, int, int], atp: list[tuple[str, int]] | None) -> dict[str, Any]:
        return {
            "on_hand": f[0],
            "reserved": f[1],
            "available_to_sell": f[2],
            "atp": [{"date": d, "quantity": q} for d, q in atp or []],
        }

    return {"web": one(web, web_atp), "marketplace": one(market, market_atp)}


# -- the rules, one case each -------------------------------------------------------------

CASES = [
    # bin movements
    pytest.param(
        [receive("m1", 10)],
        both((10, 0, 10), (10, 0, 5)),
        id="a_receipt_with_null_from_side_adds_to_on_hand",
    ),
    pytest.param(
        [receive("m1", 10, loc="DC-WEST")],
        both((10, 0, 10), (0, 0, 0)),
        id="stock_counts_only_for_channels_whose_network_has_the_location",
    ),
    pytest.param(
        [receive("m1", 10, loc="STORE-9")],
        both((0, 0, 0), (0, 0, 0)),
        id="stock_at_a_location_outside_every_network_counts_nowhere",
    ),
    pytest.param(
        [receive("m1", 10), ship("m2", 3, m=5)],
        both((7, 0, 7), (7, 0, 2)),
        id="a_shipment_with_null_to_side_removes_from_on_hand",
    ),
    pytest.param(
        [receive("m1", 10), move("m2", 4, ("A", "available"), ("B", "available"), m=5)],
        both((10, 0, 10), (10, 0, 5)),
        id="an_internal_move_between_sellable_bins_keeps_on_hand",
    ),
    pytest.param(
        [receive("m1", 10), move("m2", 3, ("A", "available"), ("A", "damaged"), m=5)],
        both((7, 0, 7), (7, 0, 2)),
        id="a_move_to_damaged_lowers_on_hand",
    ),
    pytest.param(
        [
            receive("m1", 4, status="damaged"),
            move("m2", 3, ("A", "damaged"), ("B", "available"), m=5),
        ],
        both((3, 0, 3), (3, 0, 0)),
        id="a_move_from_damaged_to_available_raises_on_hand",
    ),
    pytest.param(
        [receive("m1", 5, status="quarantine"), receive("m2", 2, status="damaged")],
        both((0, 0, 0), (0, 0, 0)),
        id="stock_in_a_status_that_is_not_sellable_is_not_on_hand",
    ),
    pytest.param(
        [ship("m1", 3)],
        both((-3, 0, 0), (-3, 0, 0)),
        id="on_hand_may_go_negative_and_available_to_sell_stays_at_0",
    ),
    pytest.param(
        [receive("m1", 6), receive("m2", 4, loc="DC-WEST", bin="Z")],
        both((10, 0, 10), (6, 0, 1)),
        id="on_hand_sums_the_bins_of_the_channel_locations",
    ),
    # cycle counts
    pytest.param(
        [receive("m1", 10), count("c1", 7, m=10)],
        both((7, 0, 7), (7, 0, 2)),
        id="a_count_sets_the_bin_exactly",
    ),
    pytest.param(
        [receive("m1", 10), receive("m2", 5, bin="B"), count("c1", 2, m=10)],
        both((7, 0, 7), (7, 0, 2)),
        id="a_count_sets_only_its_own_bin",
    ),
    pytest.param(
        [
            receive("m1", 10),
            receive("m2", 5, status="damaged"),
            count("c1", 0, m=10, status="damaged"),
        ],
        both((10, 0, 10), (10, 0, 5)),
        id="a_count_sets_only_its_own_status",
    ),
    pytest.param(
        [count("c1", 7, m=10), receive("m1", 5, m=5)],
        both((7, 0, 7), (7, 0, 2)),
        id="a_late_receipt_older_than_the_count_is_ignored",
    ),
    # stock snapshots (contract section 8)
    pytest.param(
        [receive("m1", 10), receive("m2", 5, bin="B"), snapshot("s1", {"A": 3}, m=10)],
        both((3, 0, 3), (3, 0, 0)),
        id="a_snapshot_sets_its_bins_and_zeroes_the_others_of_its_location",
    ),
    pytest.param(
        [receive("m1", 10), receive("m2", 4, loc="DC-WEST", bin="Z"), snapshot("s1", {}, m=10)],
        both((4, 0, 4), (0, 0, 0)),
        id="an_empty_snapshot_zeroes_only_its_location",
    ),
    pytest.param(
        [snapshot("s1", {"A": 3}, m=10), receive("m1", 5, m=5)],
        both((3, 0, 3), (3, 0, 0)),
        id="a_movement_older_than_the_snapshot_is_ignored",
    ),
    pytest.param(
        [count("c1", 8, m=20), snapshot("s1", {"A": 3}, m=10)],
        both((8, 0, 8), (8, 0, 3)),
        id="a_newer_count_wins_over_an_older_snapshot",
    ),
    pytest.param(
        [snapshot("s1", {"A": 3}, m=10), count("c1", 8, m=20)],
        both((8, 0, 8), (8, 0, 3)),
        id="a_count_after_the_snapshot_applies",
    ),
    pytest.param(
        [count("c1", 7, m=10), ship("m1", 5, m=5)],
        both((7, 0, 7), (7, 0, 2)),
        id="a_late_shipment_older_than_the_count_is_ignored",
    ),
    pytest.param(
        [
            receive("m1", 10, m=0),
            count("c1", 4, m=10, bin="B"),
            move("m2", 3, ("A", "available"), ("B", "available"), m=5),
        ],
        both((11, 0, 11), (11, 0, 6)),
        id="a_late_movement_is_ignored_only_on_the_counted_side",
    ),
    pytest.param(
        [count("c1", 7, m=10), receive("m1", 3, m=20)],
        both((10, 0, 10), (10, 0, 5)),
        id="a_movement_after_the_count_applies",
    ),
    pytest.param(
        [count("c1", 7, m=10), receive("m1", 3, m=10)],
        both((10, 0, 10), (10, 0, 5)),
        id="a_movement_at_the_instant_of_the_count_is_not_earlier_and_applies",
    ),
    pytest.param(
        [
            count("c1", 7, m=10),
            receive("m1", 3, m=5, status="damaged"),
            receive("m2", 2, m=5, bin="B"),
        ],
        both((9, 0, 9), (9, 0, 4)),
        id="a_count_shields_only_its_own_bin_and_status",
    ),
    pytest.param(
        [count("c1", 7, m=10), count("c2", 3, m=5)],
        both((7, 0, 7), (7, 0, 2)),
        id="an_older_count_is_ignored",
    ),
    pytest.param(
        [count("c1", 3, m=5), count("c2", 7, m=10)],
        both((7, 0, 7), (7, 0, 2)),
        id="a_newer_count_replaces_the_older",
    ),
    pytest.param(
        [count("c1", 3, m=5), count("c2", 7, m=10), receive("m1", 5, m=7)],
        both((7, 0, 7), (7, 0, 2)),
        id="a_movement_is_compared_with_the_latest_applied_count",
    ),
    pytest.param(
        [count("c1", 7, m=10), receive("m1", 5, m=12), count("c2", 3, m=5)],
        both((12, 0, 12), (12, 0, 7)),
        id="an_older_count_arriving_after_movements_is_ignored",
    ),
    pytest.param(
        [receive("m1", 10), count("c1", 0, m=10)],
        both((0, 0, 0), (0, 0, 0)),
        id="a_count_of_0_empties_the_bin",
    ),
    pytest.param(
        [count("c1", 7, m=10, loc="DC-WEST"), receive("m1", 5, m=5)],
        both((12, 0, 12), (5, 0, 0)),
        id="a_count_shields_only_its_own_location",
    ),
    # reservations
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 2)],
        both((10, 2, 8), (10, 2, 3)),
        id="a_reservation_raises_reserved_and_lowers_available_to_sell",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 2, channel="marketplace")],
        both((10, 2, 8), (10, 2, 3)),
        id="a_reservation_counts_for_every_channel_selling_from_its_location",
    ),
    pytest.param(
        [
            receive("m1", 10),
            receive("m2", 10, loc="DC-WEST"),
            create("r1", "R-1", 4, loc="DC-WEST"),
        ],
        both((20, 4, 16), (10, 0, 5)),
        id="a_reservation_outside_a_channel_network_does_not_touch_that_channel",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 4, loc="STORE-9")],
        both((10, 0, 10), (10, 0, 5)),
        id="a_reservation_outside_every_network_touches_no_channel",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 12)],
        both((10, 12, 0), (10, 12, 0)),
        id="reserved_beyond_on_hand_makes_net_negative_and_available_to_sell_0",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 2), release("r2", "R-1")],
        both((10, 0, 10), (10, 0, 5)),
        id="a_release_sets_the_open_quantity_to_0",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 2),
            release("r2", "R-1"),
            release("r3", "R-1", m=3),
        ],
        both((10, 0, 10), (10, 0, 5)),
        id="releasing_twice_changes_nothing",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 2), create("r2", "R-1", 5, m=2)],
        both((10, 2, 8), (10, 2, 3)),
        id="a_second_reservation_created_for_an_open_reservation_is_ignored",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 2),
            release("r2", "R-1"),
            create("r3", "R-1", 5, m=3),
        ],
        both((10, 0, 10), (10, 0, 5)),
        id="a_second_reservation_created_for_a_released_reservation_is_ignored",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 3), ship("m2", 3, m=5, rid="R-1")],
        both((7, 0, 7), (7, 0, 2)),
        id="a_shipment_with_its_reservation_id_drops_on_hand_and_reserved_together",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 3), ship("m2", 2, m=5, rid="R-1")],
        both((8, 1, 7), (8, 1, 2)),
        id="a_partial_shipment_consumes_part_of_the_reservation",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 3),
            ship("m2", 2, m=5, rid="R-1"),
            ship("m3", 1, m=6, rid="R-1"),
        ],
        both((7, 0, 7), (7, 0, 2)),
        id="successive_shipments_add_up_their_consumption",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 2), ship("m2", 5, m=5, rid="R-1")],
        both((5, 0, 5), (5, 0, 0)),
        id="consumption_never_takes_reserved_below_0",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 2),
            create("r2", "R-2", 3),
            ship("m2", 5, m=5, rid="R-1"),
        ],
        both((5, 3, 2), (5, 3, 0)),
        id="over_consumption_does_not_spill_onto_other_reservations",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 3),
            move("m2", 3, ("A", "available"), ("B", "available"), m=5, rid="R-1"),
        ],
        both((10, 3, 7), (10, 3, 2)),
        id="an_internal_move_with_a_reservation_id_does_not_consume_it",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 3),
            move("m2", 3, ("A", "available"), ("A", "damaged"), m=5, rid="R-1"),
        ],
        both((7, 3, 4), (7, 3, 0)),
        id="a_status_change_with_a_reservation_id_does_not_consume_it",
    ),
    pytest.param(
        [receive("m1", 10), ship("m2", 3, m=5, rid="R-9")],
        both((7, 0, 7), (7, 0, 2)),
        id="a_shipment_naming_an_unknown_reservation_only_lowers_on_hand",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 3),
            release("r2", "R-1"),
            ship("m2", 3, m=5, rid="R-1"),
        ],
        both((7, 0, 7), (7, 0, 2)),
        id="a_shipment_against_a_released_reservation_only_lowers_on_hand",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 3),
            ship("m2", 2, m=5, rid="R-1"),
            release("r2", "R-1"),
        ],
        both((8, 0, 8), (8, 0, 3)),
        id="releasing_a_partly_consumed_reservation_frees_the_rest",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 3),
            count("c1", 7, m=10),
            ship("m2", 3, m=5, rid="R-1"),
        ],
        both((7, 0, 7), (7, 0, 2)),
        id="a_shipment_older_than_a_count_is_ignored_on_its_bin_but_consumes_its_reservation",
    ),
    # inbound
    pytest.param(
        [receive("m1", 10), inbound("i1", "PO-1", 50, eta=3)],
        both((10, 0, 10), (10, 0, 5), web_atp=[(day(3), 60)]),
        id="an_inbound_line_adds_to_atp_not_to_available_to_sell",
    ),
    pytest.param(
        [inbound("i1", "PO-1", 50, m=0), inbound("i2", "PO-1", 30, m=10)],
        both((0, 0, 0), (0, 0, 0), web_atp=[(day(3), 30)]),
        id="an_inbound_update_with_a_later_occurred_at_replaces_the_line",
    ),
    pytest.param(
        [inbound("i1", "PO-1", 30, m=10), inbound("i2", "PO-1", 50, m=0)],
        both((0, 0, 0), (0, 0, 0), web_atp=[(day(3), 30)]),
        id="an_older_inbound_update_after_a_newer_one_is_ignored",
    ),
    pytest.param(
        [
            inbound("i1", "PO-1", 50, eta=3, m=0),
            inbound("i2", "PO-1", 50, eta=5, m=10, loc="DC-WEST"),
        ],
        both((0, 0, 0), (0, 0, 0), web_atp=[(day(5), 50)]),
        id="an_inbound_update_moves_the_eta_and_location_of_the_line",
    ),
    pytest.param(
        [inbound("i1", "PO-1", 50, m=0), inbound("i2", "PO-1", 0, m=10)],
        both((0, 0, 0), (0, 0, 0)),
        id="inbound_quantity_0_closes_the_line",
    ),
    pytest.param(
        [inbound("i1", "PO-1", 0, m=10), inbound("i2", "PO-1", 50, m=0)],
        both((0, 0, 0), (0, 0, 0)),
        id="an_older_update_does_not_reopen_a_closed_line",
    ),
    pytest.param(
        [inbound("i1", "PO-1", 50, m=0), inbound("i2", "PO-2", 20, m=10, eta=1)],
        both((0, 0, 0), (0, 0, 0), web_atp=[(day(1), 20), (day(3), 70)]),
        id="inbound_lines_with_different_ids_are_separate_lines",
    ),
    # dedupe
    pytest.param(
        [receive("m1", 10), receive("m1", 10)],
        both((10, 0, 10), (10, 0, 5)),
        id="a_duplicate_in_the_same_batch_is_ignored",
    ),
    pytest.param(
        [receive("m1", 10), ship("m1", 4)],
        both((10, 0, 10), (10, 0, 5)),
        id="an_event_id_already_applied_is_ignored_whatever_its_content",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 3),
            ship("m2", 3, m=5, rid="R-1"),
            ship("m2", 3, m=5, rid="R-1"),
        ],
        both((7, 0, 7), (7, 0, 2)),
        id="a_duplicated_shipment_consumes_once",
    ),
]


@pytest.mark.parametrize(("events", "expected"), CASES)
def test_rule(projector: Projector, events: list[AnyEvent], expected: dict[str, Any]) -> None:
    got = view(projector, run(events).states)
    assert {c: figures(got[(c, SKU)]) for c in expected} == expected


# -- rules that need a clock, batches or a comparison --------------------------------------


@pytest.mark.parametrize(
    ("now", "reserved"),
    [
        pytest.param(at(29), 2, id="before_expires_at_it_counts"),
        pytest.param(at(30), 0, id="at_expires_at_it_no_longer_counts"),
        pytest.param(at(31), 0, id="after_expires_at_it_no_longer_counts"),
        pytest.param(at(60 * 24 * 30), 0, id="long_after_it_still_does_not_count"),
    ],
)
def test_an_expired_reservation_stops_counting_with_no_further_event(
    projector: Projector, now: datetime, reserved: int
) -> None:
    states = run([receive("m1", 10), create("r1", "R-1", 2, expires_m=30)]).states
    got = view(projector, states, to_us(now))
    assert got[("web", SKU)]["reserved"] == reserved
    assert got[("web", SKU)]["available_to_sell"] == 10 - reserved


def test_a_reservation_without_expires_at_never_expires(projector: Projector) -> None:
    states = run([receive("m1", 10), create("r1", "R-1", 2)]).states
    got = view(projector, states, to_us(T0 + timedelta(days=365)))
    assert got[("web", SKU)]["reserved"] == 2


def test_expires_at_with_an_offset_is_the_same_instant(projector: Projector) -> None:
    plus2 = datetime(2026, 11, 27, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    event = msgspec.structs.replace(create("r1", "R-1", 2), expires_at=plus2)
    states = run([receive("m1", 10), event]).states
    assert view(projector, states, to_us(at(149)))[("web", SKU)]["reserved"] == 2
    assert view(projector, states, to_us(at(150)))[("web", SKU)]["reserved"] == 0


ORDERINGS = [
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 3), release("r2", "R-1")],
        [receive("m1", 10), release("r2", "R-1"), create("r1", "R-1", 3)],
        id="a_release_before_its_reservation_created_gives_the_natural_result",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 3), ship("m2", 3, m=5, rid="R-1")],
        [receive("m1", 10), ship("m2", 3, m=5, rid="R-1"), create("r1", "R-1", 3)],
        id="a_shipment_before_its_reservation_created_gives_the_natural_result",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 3), ship("m2", 2, m=5, rid="R-1")],
        [ship("m2", 2, m=5, rid="R-1"), receive("m1", 10), create("r1", "R-1", 3)],
        id="a_partial_shipment_before_its_reservation_created_gives_the_natural_result",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 2), ship("m2", 5, m=5, rid="R-1")],
        [receive("m1", 10), ship("m2", 5, m=5, rid="R-1"), create("r1", "R-1", 2)],
        id="an_over_consumption_before_its_reservation_created_still_stops_at_0",
    ),
    pytest.param(
        [
            receive("m1", 10),
            create("r1", "R-1", 4),
            ship("m2", 1, m=5, rid="R-1"),
            release("r2", "R-1"),
        ],
        [
            receive("m1", 10),
            release("r2", "R-1"),
            ship("m2", 1, m=5, rid="R-1"),
            create("r1", "R-1", 4),
        ],
        id="a_release_and_a_shipment_both_before_the_reservation_give_the_natural_result",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 4), release("r2", "R-1"), create("r3", "R-1", 6)],
        [receive("m1", 10), release("r2", "R-1"), create("r1", "R-1", 4), create("r3", "R-1", 6)],
        id="a_release_before_creation_still_makes_a_later_second_creation_ignored",
    ),
    pytest.param(
        [receive("m1", 10), create("r1", "R-1", 4, expires_m=300), ship("m2", 1, m=5, rid="R-1")],
        [ship("m2", 1, m=5, rid="R-1"), create("r1", "R-1", 4, expires_m=300), receive("m1", 10)],
        id="an_early_shipment_keeps_the_reservation_expiry",
    ),
    pytest.param(
        [receive("m1", 10), inbound("i1", "PO-1", 5), create("r1", "R-1", 4)],
        [inbound("i1", "PO-1", 5), create("r1", "R-1", 4), receive("m1", 10)],
        id="events_of_different_topics_commute",
    ),
]


@pytest.mark.parametrize(("natural", "reordered"), ORDERINGS)
def test_order_across_topics_does_not_matter(
    projector: Projector, natural: list[AnyEvent], reordered: list[AnyEvent]
) -> None:
    a, b = run(natural).states, run(reordered).states
    for now in (NOW_US, to_us(T0 + timedelta(days=2))):
        assert view(projector, a, now) == view(projector, b, now)
    assert canonical(a) == canonical(b)


def test_a_duplicate_across_batches_is_ignored_through_seen(projector: Projector) -> None:
    first = run([receive("m1", 10), create("r1", "R-1", 2)])
    seen = frozenset(e.event_id for e in first.applied)
    second = run(
        [receive("m1", 10), create("r1", "R-1", 2), ship("m2", 1, m=5)],
        states=first.states,
        seen=seen,
    )
    assert [e.event_id for e in second.duplicates] == ["m1", "r1"]
    assert [e.event_id for e in second.applied] == ["m2"]
    states = {**first.states, **second.states}
    assert figures(view(projector, states)[("web", SKU)]) == {
        "on_hand": 9,
        "reserved": 2,
        "available_to_sell": 7,
        "atp": [],
    }


def test_a_batch_of_only_duplicates_touches_nothing() -> None:
    first = run([receive("m1", 10)])
    second = run([receive("m1", 10)], states=first.states, seen=frozenset({"m1"}))
    assert second.states == {}
    assert second.touched == set()
    assert second.applied == []
    assert len(second.duplicates) == 1


def test_the_result_reports_touched_skus_applied_and_duplicate_events() -> None:
    events = [
        receive("m1", 1),
        receive("m2", 1, sku="SKU-2"),
        receive("m1", 1),
        create("r1", "R-1", 1, sku="SKU-3"),
    ]
    result = run(events)
    assert result.touched == {"SKU-1", "SKU-2", "SKU-3"}
    assert set(result.states) == result.touched
    assert result.applied == [events[0], events[1], events[3]]
    assert result.duplicates == [events[2]]


def test_events_of_one_sku_never_touch_another(projector: Projector) -> None:
    result = run(
        [
            receive("m1", 10),
            create("r1", "R-1", 3, sku="SKU-2"),
            release("r2", "R-1", sku="SKU-1"),
            ship("m2", 3, m=5, rid="R-1", sku="SKU-2"),
        ]
    )
    got = view(projector, result.states, skus=("SKU-1", "SKU-2"))
    assert figures(got[("web", "SKU-1")]) == {
        "on_hand": 10,
        "reserved": 0,
        "available_to_sell": 10,
        "atp": [],
    }
    assert figures(got[("web", "SKU-2")]) == {
        "on_hand": -3,
        "reserved": 0,
        "available_to_sell": 0,
        "atp": [],
    }


def test_a_shipment_consumes_only_a_reservation_of_its_own_sku(projector: Projector) -> None:
    result = run(
        [
            receive("m1", 10, sku="SKU-2"),
            create("r1", "R-1", 3, sku="SKU-2"),
            ship("m2", 3, m=5, rid="R-1", sku="SKU-1"),
        ]
    )
    got = view(projector, result.states, skus=("SKU-1", "SKU-2"))
    assert got[("web", "SKU-2")]["reserved"] == 3
    assert got[("web", "SKU-1")]["on_hand"] == -3


def test_a_shipment_leaves_available_to_sell_unchanged(projector: Projector) -> None:
    before = run([receive("m1", 10), create("r1", "R-1", 3)])
    after = run([ship("m2", 3, m=5, rid="R-1")], states=before.states, seen=frozenset({"m1", "r1"}))
    ats_before = view(projector, before.states)[("web", SKU)]["available_to_sell"]
    ats_after = view(projector, after.states)[("web", SKU)]["available_to_sell"]
    assert ats_before == ats_after == 7


def test_fold_is_pure() -> None:
    first = run([receive("m1", 10), create("r1", "R-1", 3)])
    snapshot = canonical(first.states)
    seen = frozenset({"m1", "r1"})
    run([ship("m2", 3, m=5, rid="R-1"), count("c1", 1, m=9)], states=first.states, seen=seen)
    assert canonical(first.states) == snapshot
    assert seen == frozenset({"m1", "r1"})


def test_fold_keeps_the_http_safety_stock_overrides_and_last_ats() -> None:
    state = SkuState(sku=SKU, safety_stock={"web": 3}, last_ats={"web": 7})
    new = run([receive("m1", 10)], states={SKU: state}).states[SKU]
    assert new.safety_stock == {"web": 3}
    assert new.last_ats == {"web": 7}


def test_fold_result_round_trips_through_the_stored_format() -> None:
    from streams.state import dump_state, load_state

    result = run(
        [
            receive("m1", 10),
            count("c1", 7, m=10),
            create("r1", "R-1", 3, expires_m=99),
            release("r2", "R-2"),
            inbound("i1", "PO-1", 5),
        ]
    )
    state = result.states[SKU]
    assert load_state(SKU, dump_state(state)) == state


def test_an_eta_is_stored_as_a_date_without_shifting() -> None:
    result = run([inbound("i1", "PO-1", 5, eta=0)])
    (line,) = result.states[SKU].inbound
    assert line.eta == (TODAY - date(1970, 1, 1)).days
