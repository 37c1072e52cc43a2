"""A realistic demo event stream: receipts, damage, reservations, shipments, counts, POs.

Used by ``atp dev`` (and handy for load): it keeps a little model of what it has said so
shipments consume real reservations and cycle counts land on real bins.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass
class DemoFeed:
    skus: Sequence[str]
    locations: Sequence[str]
    channels: Sequence[tuple[str, Sequence[str]]]  # (channel, its locations)
    seed: int = 7
    _rng: random.Random = field(init=False)
    _counter: int = field(init=False, default=0)
    _bins: dict[tuple[str, str, str], int] = field(init=False, default_factory=dict)
    _open: list[tuple[str, str, str, int]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self.seed}-{self._counter}"

    def _bin(self) -> str:
        return f"{self._rng.choice('ABCD')}-{self._rng.randint(1, 20):02d}-{self._rng.randint(1, 5):02d}"

    def opening_stock(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """A receipt for every sku at one or two locations, and a PO for some."""
        for sku in self.skus:
            for location in self._rng.sample(list(self.locations), k=min(2, len(self.locations))):
                yield self.receipt(sku, location, self._rng.randint(5, 60))
            if self._rng.random() < 0.3:
                yield self.purchase_order(sku)

    def receipt(self, sku: str, location: str, quantity: int) -> tuple[str, dict[str, Any]]:
        bin_ = self._bin()
        self._bins[(sku, location, bin_)] = self._bins.get((sku, location, bin_), 0) + quantity
        return "movements", movement(
            self._id("m"), sku, location, quantity, None, None, bin_, "available"
        )

    def purchase_order(self, sku: str) -> tuple[str, dict[str, Any]]:
        eta = (datetime.now(UTC) + timedelta(days=self._rng.randint(1, 20))).date()
        return "inbound", {
            "type": "inbound", "event_id": self._id("i"), "occurred_at": _now(),
            "inbound_id": f"PO-{self._rng.randint(1000, 9999)}:{self._rng.randint(1, 9)}",
            "sku": sku, "location": self._rng.choice(list(self.locations)),
            "quantity": self._rng.randint(10, 100), "eta": eta.isoformat(),
        }  # fmt: skip

    def next_event(self) -> tuple[str, dict[str, Any]]:
        roll = self._rng.random()
        if roll < 0.35 and self._open:
            return self._ship()
        if roll < 0.6:
            return self._reserve()
        if roll < 0.72:
            sku = self._rng.choice(list(self.skus))
            return self.receipt(
                sku, self._rng.choice(list(self.locations)), self._rng.randint(5, 40)
            )
        if roll < 0.8:
            return self._damage()
        if roll < 0.88 and self._bins:
            return self._count()
        if roll < 0.93 and self._open:
            return self._release()
        return self.purchase_order(self._rng.choice(list(self.skus)))

    def _reserve(self) -> tuple[str, dict[str, Any]]:
        channel, locations = self._rng.choice(list(self.channels))
        sku = self._rng.choice(list(self.skus))
        location = self._rng.choice(list(locations))
        quantity = self._rng.randint(1, 3)
        reservation_id = f"ORD-{self._id('o')}:1"
        self._open.append((reservation_id, sku, location, quantity))
        return "reservations", {
            "type": "reservation_created", "event_id": self._id("r"), "occurred_at": _now(),
            "reservation_id": reservation_id, "sku": sku, "channel": channel,
            "location": location, "quantity": quantity, "expires_at": None,
        }  # fmt: skip

    def _ship(self) -> tuple[str, dict[str, Any]]:
        reservation_id, sku, location, quantity = self._open.pop(
            self._rng.randrange(len(self._open))
        )
        held = [(k, v) for k, v in self._bins.items() if k[0] == sku and k[1] == location and v > 0]
        bin_ = held[0][0][2] if held else self._bin()
        if held:
            self._bins[held[0][0]] -= quantity
        return "movements", movement(
            self._id("m"), sku, location, quantity, bin_, "available", None, None, reservation_id
        )

    def _release(self) -> tuple[str, dict[str, Any]]:
        reservation_id, sku, _, _ = self._open.pop(self._rng.randrange(len(self._open)))
        return "reservations", {
            "type": "reservation_released", "event_id": self._id("r"), "occurred_at": _now(),
            "reservation_id": reservation_id, "sku": sku,
        }  # fmt: skip

    def _damage(self) -> tuple[str, dict[str, Any]]:
        candidates = [k for k, v in self._bins.items() if v > 0]
        if not candidates:
            return self._reserve()
        sku, location, bin_ = self._rng.choice(candidates)
        self._bins[(sku, location, bin_)] -= 1
        return "movements", movement(
            self._id("m"), sku, location, 1, bin_, "available", bin_, "damaged"
        )

    def _count(self) -> tuple[str, dict[str, Any]]:
        (sku, location, bin_), quantity = self._rng.choice(list(self._bins.items()))
        counted = max(0, quantity + self._rng.choice([-1, 0, 0, 0, 1]))
        self._bins[(sku, location, bin_)] = counted
        return "movements", {
            "type": "bin_count", "event_id": self._id("c"), "occurred_at": _now(),
            "sku": sku, "location": location, "bin": bin_, "status": "available",
            "quantity": counted,
        }  # fmt: skip


def movement(
    event_id: str,
    sku: str,
    location: str,
    quantity: int,
    from_bin: str | None,
    from_status: str | None,
    to_bin: str | None,
    to_status: str | None,
    reservation_id: str | None = None,
) -> dict[str, Any]:
    """A bin_movement event as the WMS sends it (contract section 2)."""
    return {
        "type": "bin_movement", "event_id": event_id, "occurred_at": _now(),
        "sku": sku, "location": location, "quantity": quantity,
        "from_bin": from_bin, "from_status": from_status,
        "to_bin": to_bin, "to_status": to_status, "reservation_id": reservation_id,
    }  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
