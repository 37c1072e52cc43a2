"""The formulas of contract section 1 through Projector.render, on hand-built sku states.

Test channels: web (priority 1, DC-EAST then DC-WEST, safety stock 0, horizon 14 days) and
marketplace (priority 2, DC-EAST, safety stock 5, horizon 0). STORE-9 is in no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest

from allocation.network import Network
from atp_service.config import Settings
from atp_service.model import projector_for
from streams.projector import Projector, Rendered
from streams.state import (
    US_PER_DAY,
    BinStock,
    InboundLine,
    Reservation,
    SkuState,
    to_day,
    to_us,
)
from tests.channels import Channel

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
NOW_US = to_us(NOW)
TODAY = NOW.date()
MIDNIGHT_US = to_us(datetime(2026, 11, 28, tzinfo=UTC))  # the next day starts
SKU = "SKU-1"


def stock(loc: str, qty: int, status: str = "available", bin: str = "A") -> BinStock:
    return BinStock(loc, bin, status, qty)


def held(
    rid: str,
    loc: str,
    qty: int,
    *,
    channel: str = "web",
    expires: datetime | None = None,
    consumed: int = 0,
    released: bool = False,
    created: bool = True,
) -> Reservation:
    return Reservation(
        rid, created, channel, loc, qty, consumed, released, to_us(expires) if expires else 0
    )


def line(iid: str, loc: str, qty: int, eta: int) -> InboundLine:
    """An inbound line due ``eta`` days from today (negative: in the past)."""
    return InboundLine(iid, loc, qty, to_day(TODAY + timedelta(days=eta)), NOW_US)


def d(offset: int) -> str:
    return (TODAY + timedelta(days=offset)).isoformat()


def state(
    bins: Sequence[BinStock] = (),
    reservations: Sequence[Reservation] = (),
    inbound: Sequence[InboundLine] = (),
    safety_stock: dict[str, int] | None = None,
    sku: str = SKU,
) -> SkuState:
    return SkuState(
        sku=sku,
        bins=tuple(bins),
        reservations=tuple(reservations),
        inbound=tuple(inbound),
        safety_stock=safety_stock or {},
    )


@pytest.fixture(scope="module")
def projector(test_settings: Settings) -> Projector:
    return projector_for(test_settings)


def docs(rendered: Rendered, sku: str = SKU) -> dict[str, dict[str, Any]]:
    return {c: msgspec.json.decode(raw) for c, raw in rendered.documents[sku].items()}


def render(projector: Projector, s: SkuState, now_us: int = NOW_US) -> dict[str, dict[str, Any]]:
    return docs(projector.render([s], now_us), s.sku)


def atp(doc: dict[str, Any]) -> list[tuple[str, int]]:
    return [(e["date"], e["quantity"]) for e in doc["atp"]]


def short(doc: dict[str, Any]) -> tuple[int, int, int, int]:
    """(on_hand, reserved, safety_stock, available_to_sell)"""
    return doc["on_hand"], doc["reserved"], doc["safety_stock"], doc["available_to_sell"]


# -- available_to_sell -------------------------------------------------------------------


def test_nested_safety_stock_the_marketplace_shows_5_less(projector: Projector) -> None:
    got = render(projector, state([stock("DC-EAST", 20)]))
    assert short(got["web"]) == (20, 0, 0, 20)
    assert short(got["marketplace"]) == (20, 0, 5, 15)


def test_the_marketplace_stops_selling_first_and_web_sells_the_last_units(
    projector: Projector,
) -> None:
    got = render(projector, state([stock("DC-EAST", 3)]))
    assert short(got["web"]) == (3, 0, 0, 3)
    assert short(got["marketplace"]) == (3, 0, 5, 0)


def test_net_may_be_negative_and_available_to_sell_is_then_0(projector: Projector) -> None:
    got = render(
        projector,
        state([stock("DC-EAST", 2)], [held("R-1", "DC-EAST", 5)], [line("PO-1", "DC-EAST", 10, 2)]),
    )
    assert short(got["web"]) == (2, 5, 0, 0)
    # The negative net carries into atp: max(0, -3 + 10 - 0).
    assert atp(got["web"]) == [(d(2), 7)]


def test_on_hand_and_reserved_are_summed_over_the_channel_locations(projector: Projector) -> None:
    s = state(
        [
            stock("DC-EAST", 10),
            stock("DC-EAST", 4, bin="B"),
            stock("DC-WEST", 7),
            stock("STORE-9", 100),
        ],
        [held("R-1", "DC-EAST", 1), held("R-2", "DC-WEST", 2), held("R-3", "STORE-9", 50)],
    )
    got = render(projector, s)
    assert short(got["web"]) == (21, 3, 0, 18)
    assert short(got["marketplace"]) == (14, 1, 5, 8)


def test_only_sellable_statuses_count_as_on_hand(projector: Projector) -> None:
    s = state(
        [
            stock("DC-EAST", 5),
            stock("DC-EAST", 3, "damaged"),
            stock("DC-EAST", 4, "quarantine"),
            stock("DC-EAST", 2, "qc_hold"),
        ]
    )
    assert render(projector, s)["web"]["on_hand"] == 5


def test_negative_bins_are_summed_as_they_are(projector: Projector) -> None:
    s = state([stock("DC-EAST", 5), stock("DC-EAST", -2, bin="B")])
    assert short(render(projector, s)["web"]) == (3, 0, 0, 3)


@pytest.mark.parametrize(
    ("reservation", "counted"),
    [
        pytest.param(held("R", "DC-EAST", 4), 4, id="open"),
        pytest.param(held("R", "DC-EAST", 4, consumed=1), 3, id="partly_consumed"),
        pytest.param(held("R", "DC-EAST", 4, consumed=9), 0, id="over_consumed_counts_0"),
        pytest.param(held("R", "DC-EAST", 4, released=True), 0, id="released"),
        pytest.param(held("R", "DC-EAST", 0, consumed=2, created=False), 0, id="not_yet_created"),
        pytest.param(
            held("R", "DC-EAST", 4, expires=NOW + timedelta(seconds=1)),
            4,
            id="expiring_in_the_future",
        ),
        pytest.param(held("R", "DC-EAST", 4, expires=NOW), 0, id="expiring_now"),
        pytest.param(held("R", "DC-EAST", 4, expires=NOW - timedelta(hours=1)), 0, id="expired"),
    ],
)
def test_reserved_counts_the_open_unexpired_quantity(
    projector: Projector, reservation: Reservation, counted: int
) -> None:
    got = render(projector, state([stock("DC-EAST", 10)], [reservation]))
    assert got["web"]["reserved"] == counted
    assert got["web"]["available_to_sell"] == 10 - counted


# -- the atp timeline -------------------------------------------------------------------


def test_atp_has_one_entry_per_distinct_due_date_ascending_and_cumulative(
    projector: Projector,
) -> None:
    s = state(
        [stock("DC-EAST", 10)],
        inbound=[
            line("PO-1", "DC-EAST", 10, 3),
            line("PO-2", "DC-WEST", 5, 1),
            line("PO-3", "DC-EAST", 2, 3),
            line("PO-4", "DC-WEST", 4, 7),
        ],
    )
    got = render(projector, s)
    assert atp(got["web"]) == [(d(1), 15), (d(3), 27), (d(7), 31)]
    assert got["web"]["available_to_sell"] == 10


def test_atp_subtracts_the_safety_stock_and_is_never_negative(projector: Projector) -> None:
    s = state(
        [stock("DC-EAST", 1)],
        inbound=[line("PO-1", "DC-EAST", 2, 0), line("PO-2", "DC-EAST", 10, 0)],
    )
    got = render(projector, s)
    assert atp(got["marketplace"]) == [(d(0), 8)]  # 1 + 12 - 5
    s = state([stock("DC-EAST", 1)], inbound=[line("PO-1", "DC-EAST", 2, 0)])
    assert atp(render(projector, s)["marketplace"]) == [(d(0), 0)]  # max(0, 1 + 2 - 5)


def test_a_past_eta_counts_as_due_today(projector: Projector) -> None:
    s = state(
        [stock("DC-EAST", 10)],
        inbound=[
            line("PO-1", "DC-EAST", 5, -2),
            line("PO-2", "DC-EAST", 3, 0),
            line("PO-3", "DC-EAST", 1, -40),
            line("PO-4", "DC-EAST", 7, 2),
        ],
    )
    got = render(projector, s)
    assert atp(got["web"]) == [(d(0), 19), (d(2), 26)]
    assert atp(got["marketplace"]) == [(d(0), 14)]


def test_an_eta_beyond_the_channel_horizon_is_excluded(projector: Projector) -> None:
    s = state(inbound=[line("PO-1", "DC-EAST", 5, 14), line("PO-2", "DC-EAST", 100, 15)])
    assert atp(render(projector, s)["web"]) == [(d(14), 5)]


def test_a_horizon_of_0_shows_only_inbound_due_today_or_past(projector: Projector) -> None:
    s = state(
        [stock("DC-EAST", 5)],
        inbound=[
            line("PO-1", "DC-EAST", 3, -1),
            line("PO-2", "DC-EAST", 4, 0),
            line("PO-3", "DC-EAST", 50, 1),
        ],
    )
    got = render(projector, s)
    assert atp(got["marketplace"]) == [(d(0), 7)]
    assert atp(got["web"]) == [(d(0), 12), (d(1), 62)]


def test_inbound_at_a_location_outside_the_network_is_excluded(projector: Projector) -> None:
    s = state(inbound=[line("PO-1", "DC-WEST", 9, 0), line("PO-2", "STORE-9", 50, 0)])
    got = render(projector, s)
    assert atp(got["web"]) == [(d(0), 9)]
    assert atp(got["marketplace"]) == []


def test_closed_inbound_lines_are_not_listed(projector: Projector) -> None:
    s = state([stock("DC-EAST", 1)], inbound=[line("PO-1", "DC-EAST", 0, 2)])
    got = render(projector, s)
    assert atp(got["web"]) == []


def test_atp_is_relative_to_the_date_of_now(projector: Projector) -> None:
    s = state(inbound=[line("PO-1", "DC-EAST", 6, 1), line("PO-2", "DC-EAST", 1, 16)])
    tomorrow = NOW_US + US_PER_DAY
    got = render(projector, s, tomorrow)
    assert atp(got["web"]) == [(d(1), 6)]  # PO-2 is 15 days out: beyond the horizon
    assert atp(got["marketplace"]) == [(d(1), 1)]  # PO-1 is due today: 6 - 5
    later = render(projector, s, NOW_US + 3 * US_PER_DAY)
    assert atp(later["web"]) == [(d(3), 6), (d(16), 7)]  # PO-1 past, PO-2 now within 14


def test_today_is_the_utc_date(projector: Projector) -> None:
    s = state(inbound=[line("PO-1", "DC-EAST", 8, 1)])
    just_before_midnight = MIDNIGHT_US - 1
    assert atp(render(projector, s, just_before_midnight)["marketplace"]) == []
    assert atp(render(projector, s, MIDNIGHT_US)["marketplace"]) == [(d(1), 3)]


# -- safety stock -----------------------------------------------------------------------


def test_a_per_sku_override_in_the_state_replaces_the_channel_default(
    projector: Projector,
) -> None:
    s = state(
        [stock("DC-EAST", 10)],
        inbound=[line("PO-1", "DC-EAST", 4, 0)],
        safety_stock={"marketplace": 1, "b2b": 9},
    )
    got = render(projector, s)
    assert short(got["marketplace"]) == (10, 0, 1, 9)
    assert atp(got["marketplace"]) == [(d(0), 13)]
    assert short(got["web"]) == (10, 0, 0, 10)


def test_a_per_sku_override_of_0_is_an_override(projector: Projector) -> None:
    s = state([stock("DC-EAST", 2)], safety_stock={"marketplace": 0})
    assert short(render(projector, s)["marketplace"]) == (2, 0, 0, 2)


def _with_config_overrides(settings: Settings, overrides: dict[str, dict[str, int]]) -> Settings:
    channels = tuple(
        msgspec.structs.replace(c, safety_stock_overrides=overrides.get(c.name, {}))
        for c in settings.channels
    )
    return msgspec.structs.replace(settings, channels=channels)


def test_config_per_sku_overrides_apply_to_their_sku_only(test_settings: Settings) -> None:
    projector = projector_for(
        _with_config_overrides(test_settings, {"web": {SKU: 4}, "marketplace": {"SKU-2": 0}})
    )
    rendered = projector.render(
        [state([stock("DC-EAST", 10)]), state([stock("DC-EAST", 3)], sku="SKU-2")], NOW_US
    )
    one, two = docs(rendered, SKU), docs(rendered, "SKU-2")
    assert short(one["web"]) == (10, 0, 4, 6)
    assert short(one["marketplace"]) == (10, 0, 5, 5)
    assert short(two["web"]) == (3, 0, 0, 3)
    assert short(two["marketplace"]) == (3, 0, 0, 3)


def test_an_override_set_over_http_wins_over_the_config_file(test_settings: Settings) -> None:
    projector = projector_for(_with_config_overrides(test_settings, {"web": {SKU: 4}}))
    got = render(projector, state([stock("DC-EAST", 10)], safety_stock={"web": 1}))
    assert short(got["web"]) == (10, 0, 1, 9)


# -- a sku never seen -------------------------------------------------------------------


def test_a_sku_never_seen_renders_zeros_the_channel_safety_stock_and_no_atp(
    projector: Projector,
) -> None:
    rendered = projector.render([SkuState(sku="NEW-1")], NOW_US)
    got = docs(rendered, "NEW-1")
    for channel, safety in (("web", 0), ("marketplace", 5)):
        doc = got[channel]
        doc.pop("as_of")
        assert doc == {
            "channel": channel,
            "sku": "NEW-1",
            "available_to_sell": 0,
            "on_hand": 0,
            "reserved": 0,
            "safety_stock": safety,
            "atp": [],
        }
    assert "NEW-1" not in rendered.next_change_us


# -- the document -----------------------------------------------------------------------


def test_the_document_has_exactly_the_contract_fields(projector: Projector) -> None:
    rendered = projector.render([state([stock("DC-EAST", 3)])], NOW_US + 123_456)
    doc = msgspec.json.decode(rendered.documents[SKU]["web"])
    assert list(doc) == [
        "channel",
        "sku",
        "available_to_sell",
        "on_hand",
        "reserved",
        "safety_stock",
        "atp",
        "as_of",
    ]
    assert doc["as_of"] == "2026-11-27T10:00:00.123Z"


def test_rendered_available_to_sell_matches_the_documents(projector: Projector) -> None:
    states = [
        state([stock("DC-EAST", 9)], [held("R", "DC-WEST", 2)]),
        state([stock("DC-WEST", 4)], sku="SKU-2"),
    ]
    rendered = projector.render(states, NOW_US)
    for s in states:
        for channel, raw in rendered.documents[s.sku].items():
            doc = msgspec.json.decode(raw)
            assert rendered.available_to_sell[s.sku][channel] == doc["available_to_sell"]


def test_many_skus_render_independently(projector: Projector) -> None:
    a = state([stock("DC-EAST", 9)], inbound=[line("PO-1", "DC-EAST", 1, 1)], sku="A")
    b = state(
        [stock("DC-WEST", 4)],
        [held("R", "DC-WEST", 1)],
        inbound=[line("PO-1", "DC-WEST", 2, 2)],
        sku="B",
    )
    together = projector.render([a, b], NOW_US)
    assert together.documents["A"] == projector.render([a], NOW_US).documents["A"]
    assert together.documents["B"] == projector.render([b], NOW_US).documents["B"]


# -- next_change_us ---------------------------------------------------------------------


def _next(projector: Projector, s: SkuState) -> int | None:
    return projector.render([s], NOW_US).next_change_us.get(s.sku)


def test_nothing_changes_without_expiring_reservations_or_inbound(projector: Projector) -> None:
    s = state([stock("DC-EAST", 9)], [held("R", "DC-EAST", 2)])
    assert _next(projector, s) is None


def test_the_next_change_is_the_soonest_reservation_expiry(projector: Projector) -> None:
    soon, later = NOW + timedelta(minutes=5), NOW + timedelta(hours=2)
    s = state(
        [stock("DC-EAST", 9)],
        [held("R-1", "DC-EAST", 1, expires=later), held("R-2", "DC-EAST", 1, expires=soon)],
    )
    assert _next(projector, s) == to_us(soon)


@pytest.mark.parametrize(
    "reservation",
    [
        pytest.param(held("R", "DC-EAST", 2, expires=NOW - timedelta(minutes=1)), id="expired"),
        pytest.param(
            held("R", "DC-EAST", 2, expires=NOW + timedelta(minutes=1), released=True),
            id="released",
        ),
        pytest.param(
            held("R", "DC-EAST", 2, expires=NOW + timedelta(minutes=1), consumed=2),
            id="fully_consumed",
        ),
    ],
)
def test_a_reservation_that_no_longer_counts_schedules_nothing(
    projector: Projector, reservation: Reservation
) -> None:
    assert _next(projector, state([stock("DC-EAST", 9)], [reservation])) is None


def test_a_past_eta_changes_at_the_day_rollover(projector: Projector) -> None:
    s = state(inbound=[line("PO-1", "DC-EAST", 3, -2)])
    assert _next(projector, s) == MIDNIGHT_US
    assert atp(render(projector, s, MIDNIGHT_US)["web"]) == [(d(1), 3)]


def test_an_eta_today_changes_at_the_day_rollover(projector: Projector) -> None:
    s = state(inbound=[line("PO-1", "DC-WEST", 3, 0)])
    assert _next(projector, s) == MIDNIGHT_US


def test_a_future_eta_within_every_horizon_changes_the_day_after_it(projector: Projector) -> None:
    s = state(inbound=[line("PO-1", "DC-WEST", 3, 4)])  # web only; within 14 days
    change = _next(projector, s)
    assert change == MIDNIGHT_US + 4 * US_PER_DAY
    assert render(projector, s, change - 1)["web"]["atp"] == render(projector, s)["web"]["atp"]
    assert atp(render(projector, s, change)["web"]) == [(d(5), 3)]


def test_an_eta_beyond_a_horizon_changes_when_it_enters_it(projector: Projector) -> None:
    # DC-EAST: the marketplace (horizon 0) sees it on its eta, web (14) 14 days before.
    s = state(inbound=[line("PO-1", "DC-EAST", 3, 20)])
    change = _next(projector, s)
    assert change == MIDNIGHT_US + 5 * US_PER_DAY  # day 20 - 14 = day 6
    assert atp(render(projector, s, change - 1)["web"]) == []
    assert atp(render(projector, s, change)["web"]) == [(d(20), 3)]


def test_a_future_eta_enters_the_horizon_0_channel_on_its_day(projector: Projector) -> None:
    s = state(inbound=[line("PO-1", "DC-EAST", 8, 3)])
    change = _next(projector, s)
    assert change == MIDNIGHT_US + 2 * US_PER_DAY  # marketplace: day 3
    assert atp(render(projector, s, change)["marketplace"]) == [(d(3), 3)]


def test_inbound_outside_every_network_schedules_nothing(projector: Projector) -> None:
    s = state(inbound=[line("PO-1", "STORE-9", 3, -1), line("PO-2", "STORE-9", 3, 30)])
    assert _next(projector, s) is None


def test_closed_inbound_lines_schedule_nothing(projector: Projector) -> None:
    assert _next(projector, state(inbound=[line("PO-1", "DC-EAST", 0, -1)])) is None


def test_the_next_change_is_the_earliest_of_expiry_and_day(projector: Projector) -> None:
    expiry = NOW + timedelta(hours=3)
    s = state(
        [stock("DC-EAST", 9)],
        [held("R", "DC-EAST", 2, expires=expiry)],
        inbound=[line("PO-1", "DC-EAST", 3, -1)],
    )
    assert _next(projector, s) == to_us(expiry)
    late = NOW + timedelta(days=3)
    s = state(
        [stock("DC-EAST", 9)],
        [held("R", "DC-EAST", 2, expires=late)],
        inbound=[line("PO-1", "DC-EAST", 3, -1)],
    )
    assert _next(projector, s) == MIDNIGHT_US


def test_next_change_is_reported_per_sku(projector: Projector) -> None:
    a = state(inbound=[line("PO-1", "DC-EAST", 3, -1)], sku="A")
    b = state([stock("DC-EAST", 1)], sku="B")
    c = state(
        [stock("DC-EAST", 9)], [held("R", "DC-EAST", 2, expires=NOW + timedelta(hours=1))], sku="C"
    )
    rendered = projector.render([a, b, c], NOW_US)
    assert rendered.next_change_us == {"A": MIDNIGHT_US, "C": to_us(NOW + timedelta(hours=1))}


def test_the_epoch_day_helpers_agree_with_the_calendar() -> None:
    assert to_day(date(1970, 1, 2)) == 1
    assert MIDNIGHT_US % US_PER_DAY == 0


# -- channel buffers (contract section 11) -------------------------------------------------


def buffered(**buffers: Any) -> Projector:
    channel = Channel("feed", 1, ("DC-EAST",), safety_stock=1, inbound_horizon_days=14, **buffers)
    return Projector(Network.of([channel]), frozenset({"available"}), ({},))


def test_safety_stock_percent_raises_the_safety_stock_to_a_share_of_on_hand() -> None:
    # 20% of 23 is 4.6, rounded up to 5: above the channel's own 1, so 5 applies and shows.
    got = render(buffered(safety_stock_percent=20), state([stock("DC-EAST", 23)]))["feed"]
    assert short(got) == (23, 0, 5, 18)
    # On 3 units 20% is 0.6 -> 1: the channel's 1 stands.
    got = render(buffered(safety_stock_percent=20), state([stock("DC-EAST", 3)]))["feed"]
    assert short(got) == (3, 0, 1, 2)


def test_min_available_hides_the_last_units_and_max_available_caps_the_value() -> None:
    projector = buffered(min_available=2, max_available=40)
    assert render(projector, state([stock("DC-EAST", 2)]))["feed"]["available_to_sell"] == 0
    assert render(projector, state([stock("DC-EAST", 3)]))["feed"]["available_to_sell"] == 2
    got = render(projector, state([stock("DC-EAST", 100)], inbound=[line("i", "DC-EAST", 5, 2)]))
    assert got["feed"]["available_to_sell"] == 40
    assert atp(got["feed"]) == [(d(2), 40)]  # the timeline is capped too
    # Below min_available today, offered once the inbound line is due.
    got = render(projector, state([stock("DC-EAST", 1)], inbound=[line("i", "DC-EAST", 5, 2)]))
    assert got["feed"]["available_to_sell"] == 0 and atp(got["feed"]) == [(d(2), 5)]
