"""The raw state of one sku: what the fold reads and writes, persisted as msgpack.

Times are integer microseconds since the Unix epoch (UTC) and dates are integer days since
the epoch, so the state round-trips exactly and compares cheaply. ``array_like`` keeps the
stored bytes small: the field order below is part of the stored format (append only).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Final

import msgspec

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_DATE: Final = date(1970, 1, 1)
US_PER_DAY: Final = 86_400_000_000
NO_PROMISE: Final = -1  # a backorder no supply within the horizon covers


def to_us(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def to_day(day: date) -> int:
    return (day - EPOCH_DATE).days


def from_day(day: int) -> date:
    return date.fromordinal(EPOCH_DATE.toordinal() + day)


class BinStock(msgspec.Struct, frozen=True, array_like=True):
    location: str
    bin: str
    status: str
    quantity: int
    counted_at: int = 0  # time of the latest applied cycle count, 0 = never counted


class Reservation(msgspec.Struct, frozen=True, array_like=True):
    reservation_id: str
    created: bool  # False: only a consumption or release has arrived so far
    channel: str = ""
    location: str = ""
    quantity: int = 0
    consumed: int = 0
    released: bool = False
    expires_at: int = 0  # 0 = never expires
    closed_at: int = 0  # when it stopped counting (released, consumed, expired); for pruning
    # A backorder atp made (contract section 9): when its order was first allocated (its
    # place in the queue), 0 for any other reservation; and the promised day, or NO_PROMISE.
    placed_at: int = 0
    promise_day: int = NO_PROMISE

    @property
    def is_backorder(self) -> bool:
        return self.placed_at > 0

    def open_quantity(self, now_us: int) -> int:
        if not self.created or self.released:
            return 0
        if self.expires_at and self.expires_at <= now_us:
            return 0
        return max(0, self.quantity - self.consumed)


class InboundLine(msgspec.Struct, frozen=True, array_like=True):
    inbound_id: str
    location: str
    quantity: int
    eta: int  # days since epoch
    occurred_at: int


# The event types, by the code a sku's state keeps for them (append only: stored).
RECENT_TYPES: Final = (
    "bin_movement",
    "bin_count",
    "stock_snapshot",
    "reservation_created",
    "reservation_released",
    "inbound",
)


class Recent(msgspec.Struct, frozen=True, array_like=True):
    """An event applied to the sku, as `explain` lists it (contract section 13)."""

    event_id: str
    kind: int  # index into RECENT_TYPES: one byte in the stored state, not the type's name
    occurred_at: int

    @property
    def type(self) -> str:
        return RECENT_TYPES[self.kind]


RECENT_KEPT: Final = 10


class KitDocuments(msgspec.Struct, frozen=True, array_like=True):
    """A kit's read documents and values per channel, computed from its components by the
    sweep (streams/kits.py) and kept with the kit's state, so that any write of the kit's
    record writes them again rather than figures from stock a kit does not have."""

    documents: dict[str, bytes]
    available_to_sell: dict[str, int]
    computed_at: int  # µs; a write at another time asks the sweep to compute them again


class SkuState(msgspec.Struct, frozen=True, array_like=True):
    sku: str
    bins: tuple[BinStock, ...] = ()
    reservations: tuple[Reservation, ...] = ()
    inbound: tuple[InboundLine, ...] = ()
    # Overrides set over HTTP (admin); they win over the config file's.
    safety_stock: dict[str, int] = {}
    # available_to_sell per channel as last written, to detect changes worth announcing.
    last_ats: dict[str, int] = {}
    # location -> time of the latest stock snapshot applied there: it counted every bin of
    # the location, those it did not list at 0, including bins no longer held here.
    snapshots: dict[str, int] = {}
    # The last RECENT_KEPT events applied, oldest first.
    recent: tuple[Recent, ...] = ()
    # How many times ``safety_stock`` was changed over HTTP: the order of those changes on
    # the overrides topic, whatever the API processes' clocks say (atp_service/overrides.py).
    override_seq: int = 0
    # Set while the sku is a kit (contract section 10).
    kit: KitDocuments | None = None


def with_recent(state: SkuState, applied: list[Recent]) -> SkuState:
    """``state`` with events applied outside the fold (the API's reservations) listed."""
    if not applied:
        return state
    return msgspec.structs.replace(state, recent=(*state.recent, *applied)[-RECENT_KEPT:])


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(SkuState)


def dump_state(state: SkuState) -> bytes:
    return _encoder.encode(state)


def load_state(sku: str, payload: bytes | None) -> SkuState:
    if not payload:
        return SkuState(sku=sku)
    return _decoder.decode(payload)
