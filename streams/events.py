"""Events in (contract section 2): one tagged union over ``type``, decoded at the edge.

Every message is decoded straight from its Kafka bytes into one of these frozen Structs;
anything inside the service is typed. Field names are the contract's and never change.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Final, get_args

import msgspec

Quantity = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
PositiveQuantity = Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]
# Identifiers are printable text: control characters would break logs, headers and keys.
PRINTABLE: Final = r"^[^\x00-\x1f\x7f]+$"
# For HTTP schemas, where the pattern also documents the rule in the OpenAPI document.
Sku = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=PRINTABLE)]
# In events the same rule is checked after decoding, and only for a payload that can hold a
# control character at all (see ``decode``): a regex per field was most of the decode time.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Id
# Event and reservation ids atp makes join an order id (150), a line id (100), a location,
# a suffix and a time (docs/backorders.md), and an event id prefixes those: room for all.
RefId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# RFC 3339 needs the offset; msgspec checks it while it decodes, not a second look after.
Moment = Annotated[datetime, msgspec.Meta(tz=True)]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    event_id: RefId
    occurred_at: Moment
    sku: Id
    # Not in the contract's examples; carried through to logs and the ledger when given.
    correlation_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None


class BinMovement(Event, tag="bin_movement", frozen=True):
    location: Text
    quantity: PositiveQuantity
    from_bin: Text | None = None
    from_status: Text | None = None
    to_bin: Text | None = None
    to_status: Text | None = None
    reservation_id: RefId | None = None


class BinCount(Event, tag="bin_count", frozen=True):
    location: Text
    bin: Text
    status: Text
    quantity: Quantity


class SnapshotBin(msgspec.Struct, frozen=True):
    bin: Text
    status: Text
    quantity: Quantity


MAX_SNAPSHOT_BINS: Final = 10_000


class StockSnapshot(Event, tag="stock_snapshot", frozen=True):
    """The whole stock of (sku, location) at occurred_at (contract section 8)."""

    location: Text
    bins: Annotated[list[SnapshotBin], msgspec.Meta(max_length=MAX_SNAPSHOT_BINS)]


class ReservationCreated(Event, tag="reservation_created", frozen=True):
    reservation_id: RefId
    channel: Text
    location: Text
    quantity: Quantity
    expires_at: Moment | None = None
    # Set only on the backorder reservations atp makes (contract section 9, docs/backorders.md):
    # when the order was first allocated, and the date promised (null: none covers it).
    # Left out of the JSON when unset, so other reservations read as the contract shows.
    placed_at: Moment | msgspec.UnsetType = msgspec.UNSET
    promise_date: date | msgspec.UnsetType | None = msgspec.UNSET


class ReservationReleased(Event, tag="reservation_released", frozen=True):
    reservation_id: RefId


class Inbound(Event, tag="inbound", frozen=True):
    inbound_id: Id
    location: Text
    quantity: Quantity
    eta: date


AnyEvent = (
    BinMovement | BinCount | StockSnapshot | ReservationCreated | ReservationReleased | Inbound
)

# Each event class and its ``type`` tag, for the ledger and the metrics.
TAGS: Final[dict[type, str]] = {
    kind: str(kind.__struct_config__.tag) for kind in get_args(AnyEvent)
}

# Built once and reused: msgspec decoders are cheapest when constructed a single time.
_decoder: Final = msgspec.json.Decoder(AnyEvent)
_encoder: Final = msgspec.json.Encoder()


class InvalidEvent(Exception):
    """A message that cannot be applied; it goes to the dead-letter topic with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(payload: bytes, known_channels: frozenset[str] | None = None) -> AnyEvent:
    """Decode and validate one message value.

    Raises:
        InvalidEvent: with the reason to put in the ``atp-error`` header.
    """
    try:
        event: AnyEvent = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
    except RecursionError:
        # Unknown fields are skipped recursively: a value nested thousands of levels deep
        # exhausts the stack before any field is checked.
        raise InvalidEvent("not JSON: nested too deeply") from None
    # JSON cannot carry a raw control character inside a string, only an escape (which
    # starts with a backslash); DEL may appear raw. Without either no field can hold one.
    problem = _control_characters(event) if b"\\" in payload or b"\x7f" in payload else None
    problem = problem or _check(event, known_channels)
    if problem:
        raise InvalidEvent(problem)
    return event


def encode(event: AnyEvent) -> bytes:
    return _encoder.encode(event)


def _control_characters(event: AnyEvent) -> str | None:
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if name != "correlation_id" and isinstance(value, str) and _CONTROL.search(value):
            return f"invalid event: {name} must not contain control characters"
    if type(event) is StockSnapshot:
        for i, listed in enumerate(event.bins):
            if _CONTROL.search(listed.bin) or _CONTROL.search(listed.status):
                return f"invalid event: bins[{i}] must not contain control characters"
    return None


def _check(event: AnyEvent, known_channels: frozenset[str] | None) -> str | None:
    """Rules the schema alone cannot express."""
    kind = type(event)
    if kind is BinMovement:
        movement: BinMovement = event  # type: ignore[assignment]
        # Spelled out per side: this runs for most messages, and names built per call cost.
        if (movement.from_bin is None) != (movement.from_status is None):
            return "invalid event: from_bin and from_status must both be set or both null"
        if (movement.to_bin is None) != (movement.to_status is None):
            return "invalid event: to_bin and to_status must both be set or both null"
        if movement.from_bin is None and movement.to_bin is None:
            return "invalid event: a bin_movement needs a from side, a to side, or both"
    elif kind is StockSnapshot:
        seen: set[tuple[str, str]] = set()
        for listed in event.bins:  # type: ignore[union-attr]
            pair = (listed.bin, listed.status)
            if pair in seen:
                return f"invalid event: bin {listed.bin!r} with status {listed.status!r} is listed twice"
            seen.add(pair)
    elif kind is ReservationCreated and known_channels is not None:
        channel = event.channel  # type: ignore[union-attr]
        if channel not in known_channels:
            return f"unknown channel {channel!r}"
    return None
