"""A slow, obvious model of the contract (sections 1 and 2), written from its text alone.

It is the oracle of the fold/projection tests and of the fault-injection tests (events
produced to Kafka, the projection read back from Redis). Plain dicts and loops, no numpy,
nothing shared with ``streams`` or ``allocation``: only the contract's words.

Usage::

    model = ReferenceModel(settings)
    for event in events:          # dicts as produced (JSON-like) or streams.events Structs
        model.apply(event)
    model.set_safety_stock("web", "SKU-1", 3)        # mirror of PUT .../safety-stock/SKU-1
    model.expected(now_us)        # {(channel, sku): document without as_of}

Choices where the contract is silent (each a user's natural reading):

- ``reservation_id`` and ``inbound_id`` name records of the event's ``sku`` (every event
  is keyed by its sku; a shipment consumes "a reservation of that sku").
- Equal timestamps: a count at the same ``occurred_at`` as the latest applied count is not
  "older", so it applies; a movement side at the same instant as the count is not
  "earlier", so it applies; an inbound update with the same ``occurred_at`` is not "older",
  so the later arrival wins.
- A shipment consumes its reservation even when its ``from`` side is ignored because a
  count already includes it (the count says nothing about the reservation).
- A per-sku safety stock set over HTTP wins over the config file's per-sku override.
- An event that cannot be applied (contract section 2's list) is rejected and its
  ``event_id`` is not marked as applied. So is text that is not UTF-8 (a lone UTF-16
  surrogate escape), JSON's non-standard NaN and Infinity, and nesting deeper than a parser
  follows. The implementation's documented limits are modelled: identifiers of at most 200
  characters, quantities of at most 1,000,000,000.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import msgspec

from atp_service.config import Settings

EVENT_TYPES = (
    "bin_movement",
    "bin_count",
    "stock_snapshot",
    "reservation_created",
    "reservation_released",
    "inbound",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_ID_LENGTH = 200
MAX_QUANTITY = 1_000_000_000

Outcome = Literal["applied", "duplicate", "rejected"]


class Rejected(ValueError):
    """The event cannot be applied (it would go to the dead-letter topic)."""


def moment(now_us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime (exact, no float)."""
    return _EPOCH + timedelta(microseconds=now_us)


def micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class _Channel:
    name: str
    locations: tuple[str, ...]
    safety_stock: int
    horizon_days: int
    overrides: dict[str, int]


@dataclass
class _Reservation:
    # None until its reservation_created arrives; then (channel, location, quantity, expires_at).
    created: tuple[str, str, int, datetime | None] | None = None
    consumed: int = 0
    released: bool = False

    def open_quantity(self, now: datetime) -> int:
        if self.created is None or self.released:
            return 0
        _channel, _location, quantity, expires_at = self.created
        if expires_at is not None and expires_at <= now:
            return 0
        return max(0, quantity - self.consumed)


@dataclass
class _InboundLine:
    location: str
    quantity: int
    eta: date
    occurred_at: datetime


class ReferenceModel:
    """The contract's state and formulas, one event at a time."""

    def __init__(self, settings: Settings) -> None:
        self.channels = [
            _Channel(
                name=c.name,
                locations=tuple(c.locations),
                safety_stock=c.safety_stock,
                horizon_days=c.inbound_horizon_days,
                overrides=dict(c.safety_stock_overrides),
            )
            for c in settings.channels
        ]
        self.known_channels = frozenset(c.name for c in self.channels)
        self.sellable = frozenset(settings.statuses.sellable)
        self.applied_ids: set[str] = set()
        self.sku_of: dict[str, str] = {}  # event_id -> its sku, of every applied event
        self.skus: dict[str, None] = {}  # every sku with an applied event, first-seen order
        # (sku, location, bin, status) -> quantity
        self.bins: dict[tuple[str, str, str, str], int] = {}
        # (sku, location, bin, status) -> occurred_at of the latest applied count
        self.counted_at: dict[tuple[str, str, str, str], datetime] = {}
        # (sku, location) -> the latest stock snapshot's time: it counted every bin there.
        self.snapshot_at: dict[tuple[str, str], datetime] = {}
        # (sku, reservation_id) -> reservation
        self.reservations: dict[tuple[str, str], _Reservation] = {}
        # (sku, inbound_id) -> the line as of its latest update
        self.inbound: dict[tuple[str, str], _InboundLine] = {}
        # (channel, sku) -> safety stock set over HTTP
        self.http_safety_stock: dict[tuple[str, str], int] = {}
        self.rejected: list[tuple[Any, str]] = []

    # -- events -------------------------------------------------------------------------

    def apply(self, event: Any) -> Outcome:
        """Apply one event: a dict (JSON-like), JSON bytes/str, or a streams.events Struct."""
        try:
            e = self.parse(event)
        except Rejected as exc:
            self.rejected.append((event, str(exc)))
            return "rejected"
        if e["event_id"] in self.applied_ids:
            return "duplicate"
        self.applied_ids.add(e["event_id"])
        self.sku_of[e["event_id"]] = e["sku"]
        self.skus.setdefault(e["sku"], None)
        kind = e["type"]
        if kind == "bin_movement":
            self._movement(e)
        elif kind == "bin_count":
            self._count(e)
        elif kind == "stock_snapshot":
            self._snapshot(e)
        elif kind == "reservation_created":
            self._created(e)
        elif kind == "reservation_released":
            self._released(e)
        else:
            self._inbound(e)
        return "applied"

    def apply_all(self, events: Iterable[Any]) -> list[Outcome]:
        return [self.apply(event) for event in events]

    def set_safety_stock(self, channel: str, sku: str, quantity: int | None) -> None:
        """Mirror of PUT (quantity) / DELETE (None) /v1/channels/{channel}/safety-stock/{sku}."""
        if quantity is None:
            self.http_safety_stock.pop((channel, sku), None)
        else:
            self.http_safety_stock[(channel, sku)] = quantity

    def _latest_count(self, key: tuple[str, str, str, str]) -> datetime | None:
        counts = [self.counted_at.get(key), self.snapshot_at.get(key[:2])]
        return max((c for c in counts if c is not None), default=None)

    def _side_applies(self, key: tuple[str, str, str, str], occurred_at: datetime) -> bool:
        counted = self._latest_count(key)
        return counted is None or not occurred_at < counted

    def _movement(self, e: dict[str, Any]) -> None:
        sku, location, quantity, at = e["sku"], e["location"], e["quantity"], e["occurred_at"]
        if e["from_bin"] is not None:
            key = (sku, location, e["from_bin"], e["from_status"])
            if self._side_applies(key, at):
                self.bins[key] = self.bins.get(key, 0) - quantity
        if e["to_bin"] is not None:
            key = (sku, location, e["to_bin"], e["to_status"])
            if self._side_applies(key, at):
                self.bins[key] = self.bins.get(key, 0) + quantity
        elif e["reservation_id"] is not None:
            # Stock leaves the location against a reservation: consume it (remembered if the
            # reservation has not been created yet).
            reservation = self.reservations.setdefault((sku, e["reservation_id"]), _Reservation())
            reservation.consumed += quantity

    def _count(self, e: dict[str, Any]) -> None:
        key = (e["sku"], e["location"], e["bin"], e["status"])
        latest = self._latest_count(key)
        if latest is not None and e["occurred_at"] < latest:
            return
        self.bins[key] = e["quantity"]
        self.counted_at[key] = e["occurred_at"]

    def _snapshot(self, e: dict[str, Any]) -> None:
        """Contract section 8: a bin_count of every listed (bin, status), and a bin_count of 0
        of every other (bin, status) of the sku at the location, all at occurred_at."""
        sku, location = e["sku"], e["location"]
        latest = self.snapshot_at.get((sku, location))
        if latest is not None and e["occurred_at"] < latest:
            return  # a newer snapshot counted every bin of the location after this one
        listed = {(b, s): q for b, s, q in e["bins"]}
        held = [
            k for k in self.bins if k[0] == sku and k[1] == location and (k[2], k[3]) not in listed
        ]
        for _, _, bin_, status in held:
            self._count({**e, "bin": bin_, "status": status, "quantity": 0})
        for (bin_, status), quantity in listed.items():
            self._count({**e, "bin": bin_, "status": status, "quantity": quantity})
        # Bins it did not list and the model never held are counted at 0 too.
        self.snapshot_at[(sku, location)] = e["occurred_at"]

    def _created(self, e: dict[str, Any]) -> None:
        reservation = self.reservations.setdefault((e["sku"], e["reservation_id"]), _Reservation())
        if reservation.created is not None:
            return  # a second reservation_created for the same reservation_id
        reservation.created = (e["channel"], e["location"], e["quantity"], e["expires_at"])

    def _released(self, e: dict[str, Any]) -> None:
        reservation = self.reservations.setdefault((e["sku"], e["reservation_id"]), _Reservation())
        reservation.released = True

    def _inbound(self, e: dict[str, Any]) -> None:
        key = (e["sku"], e["inbound_id"])
        current = self.inbound.get(key)
        if current is not None and e["occurred_at"] < current.occurred_at:
            return  # an older update arriving later
        self.inbound[key] = _InboundLine(e["location"], e["quantity"], e["eta"], e["occurred_at"])

    # -- the projection -----------------------------------------------------------------

    def safety_stock(self, channel: str, sku: str) -> int:
        if (channel, sku) in self.http_safety_stock:
            return self.http_safety_stock[(channel, sku)]
        c = self._channel(channel)
        if sku in c.overrides:
            return c.overrides[sku]
        return c.safety_stock

    def availability(self, channel: str, sku: str, now_us: int) -> dict[str, Any]:
        """The document of GET /v1/availability/{channel}/{sku}, without as_of."""
        c = self._channel(channel)
        now = moment(now_us)
        today = now.date()
        on_hand = 0
        for (s, location, _bin, status), quantity in self.bins.items():
            if s == sku and location in c.locations and status in self.sellable:
                on_hand += quantity
        reserved = 0
        for (s, _rid), reservation in self.reservations.items():
            if (
                s == sku
                and reservation.created is not None
                and reservation.created[1] in c.locations
            ):
                reserved += reservation.open_quantity(now)
        safety = self.safety_stock(channel, sku)
        net = on_hand - reserved
        due_lines: list[tuple[date, int]] = []
        for (s, _iid), line in self.inbound.items():
            if s != sku or line.quantity <= 0 or line.location not in c.locations:
                continue
            if line.eta > today + timedelta(days=c.horizon_days):
                continue
            due_lines.append((max(line.eta, today), line.quantity))
        atp = []
        for day in sorted({due for due, _ in due_lines}):
            due_by_day = sum(quantity for due, quantity in due_lines if due <= day)
            atp.append({"date": day.isoformat(), "quantity": max(0, net + due_by_day - safety)})
        return {
            "channel": channel,
            "sku": sku,
            "available_to_sell": max(0, net - safety),
            "on_hand": on_hand,
            "reserved": reserved,
            "safety_stock": safety,
            "atp": atp,
        }

    def expected(
        self, now_us: int, skus: Iterable[str] | None = None
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """(channel, sku) -> document (without as_of) for every channel and every sku seen
        (or the given skus, seen or not)."""
        chosen = list(self.skus) if skus is None else list(skus)
        return {
            (c.name, sku): self.availability(c.name, sku, now_us)
            for sku in chosen
            for c in self.channels
        }

    def _channel(self, name: str) -> _Channel:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(f"unknown channel {name!r}")

    # -- parsing and validation (contract section 2) -------------------------------------

    def parse(self, event: Any) -> dict[str, Any]:
        """The event as a dict with typed values, or Rejected with a reason."""
        raw: Any
        if isinstance(event, msgspec.Struct):
            raw = msgspec.to_builtins(event)
        elif isinstance(event, bytes | bytearray | str):
            try:
                raw = json.loads(event, parse_constant=_not_a_number)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise Rejected(f"not JSON: {exc!r}") from None
        else:
            raw = event
        if not isinstance(raw, Mapping):
            raise Rejected("an event is a JSON object")
        kind = raw.get("type")
        if kind not in EVENT_TYPES:
            raise Rejected(f"unknown type {kind!r}")
        e: dict[str, Any] = {
            "type": kind,
            "event_id": _text(raw, "event_id"),
            "occurred_at": _timestamp(raw, "occurred_at", required=True),
            "sku": _text(raw, "sku"),
        }
        if kind == "bin_movement":
            e["location"] = _text(raw, "location")
            e["quantity"] = _quantity(raw, minimum=1)
            for side in ("from", "to"):
                bin_ = _text(raw, f"{side}_bin", optional=True)
                status = _text(raw, f"{side}_status", optional=True)
                if (bin_ is None) != (status is None):
                    raise Rejected(f"{side}_bin and {side}_status must both be set or both null")
                e[f"{side}_bin"], e[f"{side}_status"] = bin_, status
            if e["from_bin"] is None and e["to_bin"] is None:
                raise Rejected("a bin_movement needs a from side or a to side")
            e["reservation_id"] = _text(raw, "reservation_id", optional=True)
        elif kind == "bin_count":
            e["location"] = _text(raw, "location")
            e["bin"] = _text(raw, "bin")
            e["status"] = _text(raw, "status")
            e["quantity"] = _quantity(raw, minimum=0)
        elif kind == "stock_snapshot":
            e["location"] = _text(raw, "location")
            e["bins"] = _snapshot_bins(raw)
        elif kind == "reservation_created":
            e["reservation_id"] = _text(raw, "reservation_id")
            e["channel"] = _text(raw, "channel")
            if e["channel"] not in self.known_channels:
                raise Rejected(f"unknown channel {e['channel']!r}")
            e["location"] = _text(raw, "location")
            e["quantity"] = _quantity(raw, minimum=0)
            e["expires_at"] = _timestamp(raw, "expires_at", required=False)
        elif kind == "reservation_released":
            e["reservation_id"] = _text(raw, "reservation_id")
        else:
            e["inbound_id"] = _text(raw, "inbound_id")
            e["location"] = _text(raw, "location")
            e["quantity"] = _quantity(raw, minimum=0)
            e["eta"] = _date(raw, "eta")
        return e


def _text(raw: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    value = raw.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise Rejected(f"{name} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise Rejected(f"{name} is longer than {MAX_ID_LENGTH} characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise Rejected(f"{name} is not UTF-8 text") from None
    return value


def _snapshot_bins(raw: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    bins = raw.get("bins")
    if not isinstance(bins, list):
        raise Rejected("bins must be a list")
    if len(bins) > 10_000:
        raise Rejected("at most 10,000 bins")
    out = []
    for item in bins:
        if not isinstance(item, Mapping):
            raise Rejected("a bin is an object")
        out.append((_text(item, "bin"), _text(item, "status"), _quantity(item, minimum=0)))
    if len({(b, s) for b, s, _ in out}) != len(out):
        raise Rejected("a (bin, status) is listed twice")
    return out


def _not_a_number(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def _quantity(raw: Mapping[str, Any], *, minimum: int) -> int:
    value = raw.get("quantity")
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected("quantity must be an integer")
    if not minimum <= value <= MAX_QUANTITY:
        raise Rejected(f"quantity must be from {minimum} to {MAX_QUANTITY}")
    return value


def _timestamp(raw: Mapping[str, Any], name: str, *, required: bool) -> datetime | None:
    value = raw.get(name)
    if value is None and not required:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _RFC3339.match(value):
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    else:
        raise Rejected(f"{name} must be an RFC 3339 timestamp")
    if parsed.tzinfo is None:
        raise Rejected(f"{name} must carry a UTC offset")
    return parsed


def _date(raw: Mapping[str, Any], name: str) -> date:
    value = raw.get(name)
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise Rejected(f"{name} must be a date YYYY-MM-DD")
