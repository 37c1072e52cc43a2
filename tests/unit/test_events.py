"""Decoding events at the edge (contract section 2): what is accepted and what is rejected."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from atp_service.config import Settings
from streams.events import (
    BinCount,
    BinMovement,
    Inbound,
    InvalidEvent,
    ReservationCreated,
    ReservationReleased,
    StockSnapshot,
    decode,
    encode,
)
from tests.reference import ReferenceModel

CHANNELS = frozenset({"web", "marketplace"})

# The examples of the contract, verbatim.
MOVEMENT = b"""{"type": "bin_movement", "event_id": "m-1001", "occurred_at": "2026-11-27T10:00:00Z",
 "sku": "SKU-1", "location": "DC-EAST", "quantity": 10,
 "from_bin": null, "from_status": null, "to_bin": "A-01-03", "to_status": "available",
 "reservation_id": null}"""
COUNT = b"""{"type": "bin_count", "event_id": "c-77", "occurred_at": "2026-11-27T11:00:00Z",
 "sku": "SKU-1", "location": "DC-EAST", "bin": "A-01-03", "status": "available", "quantity": 7}"""
CREATED = b"""{"type": "reservation_created", "event_id": "r-5", "occurred_at": "2026-11-27T10:01:00Z",
 "reservation_id": "ORD-9:1", "sku": "SKU-1", "channel": "web", "location": "DC-EAST",
 "quantity": 2, "expires_at": null}"""
RELEASED = b"""{"type": "reservation_released", "event_id": "r-6", "occurred_at": "2026-11-27T10:05:00Z",
 "reservation_id": "ORD-9:1", "sku": "SKU-1"}"""
INBOUND = b"""{"type": "inbound", "event_id": "i-3", "occurred_at": "2026-11-27T09:00:00Z",
 "inbound_id": "PO-7:1", "sku": "SKU-1", "location": "DC-EAST", "quantity": 50,
 "eta": "2026-12-03"}"""

EXAMPLES = {
    "bin_movement": MOVEMENT,
    "bin_count": COUNT,
    "reservation_created": CREATED,
    "reservation_released": RELEASED,
    "inbound": INBOUND,
}


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 27, hour, minute, tzinfo=UTC)


def test_the_bin_movement_example_decodes() -> None:
    assert decode(MOVEMENT, CHANNELS) == BinMovement(
        event_id="m-1001",
        occurred_at=at(10),
        sku="SKU-1",
        location="DC-EAST",
        quantity=10,
        from_bin=None,
        from_status=None,
        to_bin="A-01-03",
        to_status="available",
        reservation_id=None,
    )


def test_the_bin_count_example_decodes() -> None:
    assert decode(COUNT, CHANNELS) == BinCount(
        event_id="c-77",
        occurred_at=at(11),
        sku="SKU-1",
        location="DC-EAST",
        bin="A-01-03",
        status="available",
        quantity=7,
    )


def test_the_reservation_created_example_decodes() -> None:
    assert decode(CREATED, CHANNELS) == ReservationCreated(
        event_id="r-5",
        occurred_at=at(10, 1),
        sku="SKU-1",
        reservation_id="ORD-9:1",
        channel="web",
        location="DC-EAST",
        quantity=2,
        expires_at=None,
    )


def test_the_reservation_released_example_decodes() -> None:
    assert decode(RELEASED, CHANNELS) == ReservationReleased(
        event_id="r-6",
        occurred_at=at(10, 5),
        sku="SKU-1",
        reservation_id="ORD-9:1",
    )


def test_the_inbound_example_decodes() -> None:
    assert decode(INBOUND, CHANNELS) == Inbound(
        event_id="i-3",
        occurred_at=at(9),
        sku="SKU-1",
        inbound_id="PO-7:1",
        location="DC-EAST",
        quantity=50,
        eta=date(2026, 12, 3),
    )


def _with(example: bytes, **changes: Any) -> bytes:
    body = json.loads(example)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return json.dumps(body).encode()


_DROP = object()


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_unknown_extra_fields_are_ignored(kind: str) -> None:
    plain = decode(EXAMPLES[kind], CHANNELS)
    extended = _with(
        EXAMPLES[kind], schema_version=3, origin={"system": "wms", "site": [1, 2]}, note=None
    )
    assert decode(extended, CHANNELS) == plain


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_example_round_trips_through_encode(kind: str) -> None:
    event = decode(EXAMPLES[kind], CHANNELS)
    assert decode(encode(event), CHANNELS) == event


ACCEPTED = [
    pytest.param(
        _with(
            MOVEMENT,
            to_bin=None,
            to_status=None,
            from_bin="A-01-03",
            from_status="available",
            reservation_id="ORD-9:1",
        ),
        id="a_shipment_with_a_reservation_id",
    ),
    pytest.param(
        _with(
            MOVEMENT,
            from_bin="A-01-03",
            from_status="available",
            to_bin="A-01-03",
            to_status="damaged",
        ),
        id="a_status_change",
    ),
    pytest.param(
        _with(MOVEMENT, from_bin=_DROP, from_status=_DROP, reservation_id=_DROP),
        id="a_movement_with_the_null_fields_absent",
    ),
    pytest.param(
        _with(CREATED, expires_at="2026-11-27T12:00:00+02:00"),
        id="a_reservation_with_expires_at_and_an_offset",
    ),
    pytest.param(_with(CREATED, expires_at=_DROP), id="a_reservation_with_expires_at_absent"),
    pytest.param(_with(CREATED, channel="marketplace"), id="a_reservation_of_another_channel"),
    pytest.param(_with(COUNT, quantity=0), id="a_count_of_0"),
    pytest.param(_with(INBOUND, quantity=0), id="an_inbound_of_0_closing_the_line"),
    pytest.param(_with(CREATED, quantity=0), id="a_reservation_of_0"),
    pytest.param(
        _with(MOVEMENT, occurred_at="2026-11-27T10:00:00.123456-05:30"),
        id="a_timestamp_with_fraction_and_negative_offset",
    ),
    pytest.param(_with(MOVEMENT, sku="SKU-ü 1"), id="a_unicode_sku"),
]


@pytest.mark.parametrize("payload", ACCEPTED)
def test_valid_variants_are_accepted(payload: bytes) -> None:
    decode(payload, CHANNELS)


def test_an_offset_timestamp_is_the_same_instant() -> None:
    event = decode(_with(MOVEMENT, occurred_at="2026-11-27T12:00:00+02:00"), CHANNELS)
    assert event.occurred_at == at(10)
    assert event.occurred_at.utcoffset() == timedelta(hours=2)
    assert event.occurred_at.tzinfo == timezone(timedelta(hours=2))


REJECTED = [
    pytest.param(b"not json", "JSON", id="not_json"),
    pytest.param(b"", "JSON", id="empty"),
    pytest.param(b'{"type": "bin_movement", ', "JSON", id="truncated_json"),
    pytest.param(b"[1, 2]", "", id="not_an_object"),
    pytest.param(b"null", "", id="json_null"),
    pytest.param(_with(MOVEMENT, type="bin_teleport"), "type", id="unknown_type"),
    pytest.param(_with(MOVEMENT, type=_DROP), "type", id="missing_type"),
    pytest.param(_with(MOVEMENT, quantity=-1), "quantity", id="negative_movement_quantity"),
    pytest.param(_with(COUNT, quantity=-1), "quantity", id="negative_count_quantity"),
    pytest.param(_with(CREATED, quantity=-2), "quantity", id="negative_reservation_quantity"),
    pytest.param(_with(INBOUND, quantity=-50), "quantity", id="negative_inbound_quantity"),
    pytest.param(_with(MOVEMENT, quantity=0), "quantity", id="quantity_0_for_a_bin_movement"),
    pytest.param(_with(MOVEMENT, to_bin=None, to_status=None), "side", id="both_sides_null"),
    pytest.param(_with(MOVEMENT, to_status=None), "to_", id="a_side_with_a_bin_but_no_status"),
    pytest.param(_with(MOVEMENT, to_bin=None), "to_", id="a_side_with_a_status_but_no_bin"),
    pytest.param(
        _with(MOVEMENT, from_bin="A-01-01"), "from_", id="a_from_side_with_a_bin_but_no_status"
    ),
    pytest.param(_with(MOVEMENT, quantity="10"), "quantity", id="quantity_as_a_string"),
    pytest.param(_with(MOVEMENT, quantity=10.5), "quantity", id="quantity_as_a_fraction"),
    pytest.param(_with(MOVEMENT, quantity=10.0), "quantity", id="quantity_as_a_float"),
    pytest.param(_with(MOVEMENT, quantity=True), "quantity", id="quantity_as_a_boolean"),
    pytest.param(_with(MOVEMENT, sku=42), "sku", id="sku_as_a_number"),
    pytest.param(_with(MOVEMENT, location=None), "location", id="location_null"),
    pytest.param(
        _with(MOVEMENT, occurred_at=1764237600), "occurred_at", id="occurred_at_as_a_number"
    ),
    pytest.param(
        _with(MOVEMENT, occurred_at="yesterday"), "occurred_at", id="occurred_at_not_a_timestamp"
    ),
    pytest.param(_with(INBOUND, eta="03/12/2026"), "eta", id="eta_not_a_date"),
    pytest.param(_with(MOVEMENT, event_id=_DROP), "event_id", id="missing_event_id"),
    pytest.param(_with(MOVEMENT, event_id=""), "event_id", id="empty_event_id"),
    pytest.param(_with(MOVEMENT, event_id=None), "event_id", id="null_event_id"),
    pytest.param(_with(MOVEMENT, sku=_DROP), "sku", id="missing_sku"),
    pytest.param(_with(MOVEMENT, occurred_at=_DROP), "occurred_at", id="missing_occurred_at"),
    pytest.param(_with(COUNT, bin=_DROP), "bin", id="count_missing_bin"),
    pytest.param(
        _with(RELEASED, reservation_id=_DROP), "reservation_id", id="release_missing_reservation_id"
    ),
    pytest.param(_with(INBOUND, inbound_id=_DROP), "inbound_id", id="inbound_missing_id"),
    pytest.param(_with(CREATED, channel="b2b"), "channel", id="unknown_channel_in_a_reservation"),
    pytest.param(
        _with(MOVEMENT, occurred_at="2026-11-27T10:00:00"), "occurred_at", id="naive_occurred_at"
    ),
    pytest.param(
        _with(CREATED, expires_at="2026-11-27T12:00:00"), "expires_at", id="naive_expires_at"
    ),
]


@pytest.mark.parametrize(("payload", "hint"), REJECTED)
def test_invalid_events_are_rejected_with_a_reason(payload: bytes, hint: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode(payload, CHANNELS)
    reason = caught.value.reason
    assert reason
    assert reason == str(caught.value)
    assert hint in reason


def test_an_unknown_channel_is_only_checked_when_the_channels_are_given() -> None:
    assert decode(_with(CREATED, channel="b2b")).channel == "b2b"


def test_a_reason_fits_in_a_header() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode(b"\xff\xfe not utf-8", CHANNELS)
    caught.value.reason.encode("utf-8")


# -- the reference model (tests/reference.py) judges validity the same way ----------------


@pytest.mark.parametrize(
    "payload",
    [pytest.param(p, id=k) for k, p in EXAMPLES.items()]
    + [pytest.param(p.values[0], id=p.id) for p in ACCEPTED]
    + [pytest.param(p.values[0], id=p.id) for p in REJECTED],
)
def test_the_reference_model_accepts_and_rejects_the_same_events(
    test_settings: Settings, payload: bytes
) -> None:
    model = ReferenceModel(test_settings)
    try:
        decode(payload, CHANNELS)
        accepted = True
    except InvalidEvent:
        accepted = False
    outcome = model.apply(payload)
    assert outcome == ("applied" if accepted else "rejected"), model.rejected


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("sku", "SKU\\u0000-1"),
        ("location", "DC\\nEAST"),
        ("event_id", "m\\t1"),
        ("reservation_id", "ORD\x7f9"),
    ],
)
def test_identifiers_with_control_characters_are_rejected_naming_the_field(
    field: str, text: str
) -> None:
    payload = CREATED.replace(f'"{field}": "'.encode(), f'"{field}": "{text}'.encode(), 1)
    assert payload != CREATED
    with pytest.raises(InvalidEvent, match=f"{field} must not contain control characters"):
        decode(payload, CHANNELS)


def test_identifiers_with_harmless_escapes_decode() -> None:
    # Escaped quotes, slashes and non-ASCII letters are printable: the slower check passes them.
    payload = CREATED.replace(b'"ORD-9:1"', b'"ORD-\\"9\\"\\/1-\\u00e9"')
    event = decode(payload, CHANNELS)
    assert isinstance(event, ReservationCreated)
    assert event.reservation_id == 'ORD-"9"/1-\u00e9'


SNAPSHOT = {
    "type": "stock_snapshot", "event_id": "s-1", "occurred_at": "2026-11-27T06:00:00Z",
    "sku": "SKU-1", "location": "DC-EAST",
    "bins": [{"bin": "A-01-03", "status": "available", "quantity": 7},
             {"bin": "Q-1", "status": "quarantine", "quantity": 2}],
}  # fmt: skip


def test_the_stock_snapshot_example_decodes() -> None:
    event = decode(json.dumps(SNAPSHOT).encode())
    assert isinstance(event, StockSnapshot)
    assert event.location == "DC-EAST"
    assert [(b.bin, b.status, b.quantity) for b in event.bins] == [
        ("A-01-03", "available", 7),
        ("Q-1", "quarantine", 2),
    ]
    assert decode(json.dumps({**SNAPSHOT, "bins": []}).encode()).bins == []  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("bins", "hint"),
    [
        ([{"bin": "A", "status": "available", "quantity": 1}] * 2, "listed twice"),
        ([{"bin": "A", "status": "available", "quantity": -1}], "quantity"),
        ([{"bin": "A", "status": "available"}], "quantity"),
        ([{"bin": "", "status": "available", "quantity": 1}], "bin"),
        ([{"bin": f"B-{i}", "status": "available", "quantity": 1} for i in range(10_001)], "10000"),
        ([{"bin": "A\u0007", "status": "available", "quantity": 1}], "control"),
        ("none", "bins"),
    ],
)
def test_a_malformed_snapshot_is_refused_with_a_reason(bins: Any, hint: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        decode(json.dumps({**SNAPSHOT, "bins": bins}).encode())
    assert hint in refused.value.reason
    missing = {k: v for k, v in SNAPSHOT.items() if k != "bins"}
    with pytest.raises(InvalidEvent, match="bins"):
        decode(json.dumps(missing).encode())
