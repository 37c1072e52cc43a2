"""The re-plan step of contract section 9 on hand-built states (streams/backorders.py)."""

from __future__ import annotations

import msgspec

from atp_service.config import parse_config
from atp_service.model import projector_for
from streams.backorders import build_replanned, expand_events, open_claims, replan
from streams.events import ReservationCreated
from streams.state import US_PER_DAY, BinStock, InboundLine, Reservation, SkuState
from tests.conftest import config_text

PROJECTOR = projector_for(parse_config(config_text()))
NOW = 20_000 * US_PER_DAY + 3_600_000_000
WINDOW = 7 * US_PER_DAY


def claim(rid: str, quantity: int, placed_at: int) -> Reservation:
    return Reservation(rid, True, "web", "DC-EAST", quantity, placed_at=placed_at)


def test_a_conversion_id_is_never_one_used_before_even_once_forgotten() -> None:
    """Closed reservations leave the state after the dedupe window, so the state cannot
    say which ids were used: a re-plan's ids carry its time (a reused id would be a
    second reservation_created for a known reservation, which the contract ignores)."""
    state = SkuState(
        "S",
        bins=(BinStock("DC-EAST", "A", "available", 2),),
        # ORD-9:1:DC-EAST took 2 from stock, shipped, and was pruned since.
        reservations=(claim("ORD-9:1:DC-EAST:backorder", 3, NOW - 9 * US_PER_DAY),),
    )
    first = replan([state], PROJECTOR, NOW, WINDOW)
    created = [e for e in first.events["S"] if isinstance(e, ReservationCreated)]
    ids = [e.reservation_id for e in created]
    assert ids == [f"ORD-9:1:DC-EAST#{NOW}", f"ORD-9:1:DC-EAST:backorder#{NOW}"]
    assert [e.quantity for e in created] == [2, 1]
    # The converted reservation is shipped and forgotten; the rest converts a day later.
    later = NOW + US_PER_DAY
    left = msgspec.structs.replace(
        first.states["S"],
        bins=(BinStock("DC-EAST", "A", "available", 1),),
        reservations=tuple(r for r in first.states["S"].reservations if r.is_backorder),
    )
    second = replan([left], PROJECTOR, later, WINDOW)
    again = [e.reservation_id for e in second.events["S"] if isinstance(e, ReservationCreated)]
    assert again == [f"ORD-9:1:DC-EAST#{later}"] and not set(again) & set(ids)
    assert open_claims(second.states["S"], later) == []


def served(on_hand: int) -> tuple[dict[str, str], dict[str, int]]:
    state = SkuState(
        "S",
        bins=(BinStock("DC-EAST", "A", "available", on_hand),),
        reservations=(
            # The marketplace (priority 2, safety stock 5) placed its order first.
            Reservation("M:1:DC-EAST:backorder", True, "marketplace", "DC-EAST", 1, placed_at=1),
            claim("W-LATE:1:DC-EAST:backorder", 2, placed_at=30),
            claim("W-EARLY:1:DC-EAST:backorder", 2, placed_at=20),
        ),
    )
    done = replan([state], PROJECTOR, NOW, WINDOW)
    left = {r.reservation_id.split(":")[0]: r.quantity for r in open_claims(done.states["S"], NOW)}
    return done.orders, left


def test_claims_are_served_by_channel_priority_then_by_when_their_order_was_placed() -> None:
    # 3 on hand: the older web order converts whole, the later one in part.
    assert served(3) == ({"W-EARLY": "confirmed", "W-LATE": "confirmed"}, {"M": 1, "W-LATE": 1})
    # 6 on hand: web first leaves 2, under the marketplace's safety stock of 5, so the
    # marketplace's older order waits (served first, it would have taken its 1 from 6 - 5).
    assert served(6) == ({"W-EARLY": "confirmed", "W-LATE": "confirmed"}, {"M": 1})


def test_the_outbox_keeps_the_re_plan_events_that_publishing_makes_again() -> None:
    """The outbox keeps a sku's re-plan events compact; published, they are the very
    events the re-plan applied: converted, promised again, and left with no promise."""
    state = SkuState(
        "S",
        bins=(BinStock("DC-EAST", "A", "available", 3),),
        inbound=(InboundLine("PO-1", "DC-EAST", 2, NOW // US_PER_DAY + 3, NOW - 1),),
        reservations=(
            claim("A:1:DC-EAST:backorder", 4, placed_at=10),  # 3 from stock, 1 promised
            claim("B:1:DC-EAST:backorder", 1, placed_at=20),  # promised the inbound line
            msgspec.structs.replace(  # nothing left to cover it: its promise goes
                claim("C:7:DC-EAST:backorder", 5, placed_at=30), promise_day=NOW // US_PER_DAY
            ),
        ),
    )
    done = replan([state], PROJECTOR, NOW, WINDOW)
    events = done.events["S"]
    claimed = [e for e in events if isinstance(e, ReservationCreated) and e.placed_at]
    assert {e.promise_date is None for e in claimed} == {True, False}
    assert len(events) == 7
    assert expand_events("S", done.compact["S"]) == [msgspec.json.encode(e) for e in events]


def test_a_write_marks_the_batchs_events_checked_and_its_own_re_plan_events_unchecked() -> None:
    """The store checks that none of a batch's events was marked meanwhile (another writer
    applied it); a re-plan's own events are new by their ids, so they are only marked,
    and they must come after the batch's, counted by ``own`` (write.lua reads it so)."""
    state = SkuState(
        "S",
        bins=(BinStock("DC-EAST", "A", "available", 3),),
        reservations=(claim("A:1:DC-EAST:backorder", 2, 10), claim("B:1:DC-EAST:backorder", 1, 20)),
    )
    batch_ids = ["wms-1", "wms-2"]
    changes, replanned = build_replanned([state], {}, PROJECTOR, NOW, WINDOW, {"S": batch_ids})
    (write,) = changes.skus
    own = replanned.event_ids["S"]
    assert len(own) == 4  # both claims released and converted to stock reservations
    assert write.own == len(own) and write.seen == batch_ids + own
    # A sku with nothing to re-plan has no events of its own.
    plain = SkuState("T", bins=(BinStock("DC-EAST", "A", "available", 1),))
    changes, _ = build_replanned([plain], {}, PROJECTOR, NOW, WINDOW, {"T": ["wms-3"]})
    assert [(w.seen, w.own) for w in changes.skus] == [(["wms-3"], 0)]
