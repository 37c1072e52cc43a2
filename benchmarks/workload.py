"""A fast, realistic event workload for the benchmarks (contract section 2 events).

Unlike ``atp_service.local.demo.DemoFeed`` (which scans its bin list per event and is meant for a
few hundred skus), every step here is O(1), so 500k-event streams over 10k skus take seconds
to generate. The mix: receipts, reservations, shipments consuming a reservation, releases,
moves to damaged, internal moves, cycle counts and inbound purchase-order lines; all valid,
all with distinct event_ids, keyed by sku.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from atp_service.local.demo import movement

TOPIC_OF = {
    "bin_movement": "movements",
    "bin_count": "movements",
    "reservation_created": "reservations",
    "reservation_released": "reservations",
    "inbound": "inbound",
}

_encode = msgspec.json.encode


def sku_name(i: int) -> str:
    return f"SKU-{i:07d}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Workload:
    """Generates (kind, sku, event dict); ``kind`` is movements, reservations or inbound."""

    skus: Sequence[str]
    locations: Sequence[str]
    channels: Sequence[tuple[str, Sequence[str]]]  # (channel, its locations)
    seed: int = 11
    prefix: str = "b"
    # Share of reservation_created events made as atp's own backorders (contract section
    # 9): "<order>:1:<location>:backorder", event_id "atp-alloc:<id>", placed_at set. Drawn
    # from a generator of their own, so 0 gives exactly the plain workload.
    backordered: float = 0.0
    _rng: random.Random = field(init=False)
    _backorder_rng: random.Random = field(init=False)
    _n: int = field(init=False, default=0)
    # sku -> list of (location, bin) holding stock (ever received)
    _bins: dict[str, list[tuple[str, str]]] = field(init=False, default_factory=dict)
    # open reservations: (reservation_id, sku, location, quantity)
    _open: list[tuple[str, str, str, int]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._backorder_rng = random.Random(self.seed + 1)

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{self.prefix}{kind}{self._n}"

    def opening_stock(
        self, locations_per_sku: int = 2
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        k = min(locations_per_sku, len(self.locations))
        for sku in self.skus:
            for location in self._rng.sample(list(self.locations), k=k):
                yield self.receipt(sku, location, self._rng.randint(20, 200))

    def receipt(
        self, sku: str, location: str, quantity: int, bin_: str | None = None
    ) -> tuple[str, str, dict[str, Any]]:
        bin_ = bin_ or f"{self._rng.choice('ABCD')}-{self._rng.randint(1, 4):02d}"
        held = self._bins.setdefault(sku, [])
        if (location, bin_) not in held:
            held.append((location, bin_))
        return (
            "movements",
            sku,
            movement(self._id("m"), sku, location, quantity, None, None, bin_, "available"),
        )

    def next_event(self) -> tuple[str, str, dict[str, Any]]:
        roll = self._rng.random()
        if roll < 0.20 and self._open:
            return self._ship()
        if roll < 0.45:
            return self._reserve()
        if roll < 0.60:
            sku = self._rng.choice(self.skus)
            return self.receipt(sku, self._rng.choice(self.locations), self._rng.randint(5, 40))
        if roll < 0.68:
            return self._move(to_status="damaged")
        if roll < 0.75:
            return self._move(to_status="available")
        if roll < 0.85:
            return self._count()
        if roll < 0.90 and self._open:
            return self._release()
        return self._inbound()

    def events(self, n: int) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for _ in range(n):
            yield self.next_event()

    def _held(self, sku: str) -> tuple[str, str]:
        held = self._bins.get(sku)
        if not held:
            location = self._rng.choice(self.locations)
            return location, "A-01"
        return held[self._rng.randrange(len(held))]

    def _reserve(self) -> tuple[str, str, dict[str, Any]]:
        channel, locations = self._rng.choice(self.channels)
        sku = self._rng.choice(self.skus)
        location = self._rng.choice(locations)
        quantity = self._rng.randint(1, 3)
        if self.backordered and self._backorder_rng.random() < self.backordered:
            return self._backorder(sku, channel, location, quantity)
        reservation_id = f"ORD-{self._id('o')}:1"
        self._open.append((reservation_id, sku, location, quantity))
        return "reservations", sku, {
            "type": "reservation_created", "event_id": self._id("r"), "occurred_at": now_iso(),
            "reservation_id": reservation_id, "sku": sku, "channel": channel,
            "location": location, "quantity": quantity, "expires_at": None,
        }  # fmt: skip

    def _backorder(
        self, sku: str, channel: str, location: str, quantity: int
    ) -> tuple[str, str, dict[str, Any]]:
        """A backorder as the service makes it after POST /v1/allocations. Its promise is
        null: the generator does not know the sku's supply, and a date the planner does not
        agree with would be re-planned at once (a promise_changed the service never makes).
        Never shipped or released here (a shipment goes against the stock reservation a
        conversion makes, which only the consumer knows)."""
        reservation_id = f"ORD-{self._id('o')}:1:{location}:backorder"
        now = now_iso()
        return "reservations", sku, {
            "type": "reservation_created", "event_id": f"atp-alloc:{reservation_id}",
            "occurred_at": now, "reservation_id": reservation_id, "sku": sku,
            "channel": channel, "location": location, "quantity": quantity, "expires_at": None,
            "placed_at": now, "promise_date": None,
        }  # fmt: skip

    def _take_open(self) -> tuple[str, str, str, int]:
        i = self._rng.randrange(len(self._open))
        self._open[i], self._open[-1] = self._open[-1], self._open[i]
        return self._open.pop()

    def _ship(self) -> tuple[str, str, dict[str, Any]]:
        reservation_id, sku, location, quantity = self._take_open()
        bin_ = next((b for loc, b in self._bins.get(sku, ()) if loc == location), "A-01")
        return (
            "movements",
            sku,
            movement(
                self._id("m"),
                sku,
                location,
                quantity,
                bin_,
                "available",
                None,
                None,
                reservation_id,
            ),
        )

    def _release(self) -> tuple[str, str, dict[str, Any]]:
        reservation_id, sku, _, _ = self._take_open()
        return "reservations", sku, {
            "type": "reservation_released", "event_id": self._id("r"), "occurred_at": now_iso(),
            "reservation_id": reservation_id, "sku": sku,
        }  # fmt: skip

    def _move(self, to_status: str) -> tuple[str, str, dict[str, Any]]:
        sku = self._rng.choice(self.skus)
        location, bin_ = self._held(sku)
        to_bin = (
            bin_
            if to_status == "damaged"
            else f"{self._rng.choice('EFGH')}-{self._rng.randint(1, 4):02d}"
        )
        if to_status == "available":
            held = self._bins.setdefault(sku, [])
            if (location, to_bin) not in held:
                held.append((location, to_bin))
        return (
            "movements",
            sku,
            movement(self._id("m"), sku, location, 1, bin_, "available", to_bin, to_status),
        )

    def _count(self) -> tuple[str, str, dict[str, Any]]:
        sku = self._rng.choice(self.skus)
        location, bin_ = self._held(sku)
        return "movements", sku, {
            "type": "bin_count", "event_id": self._id("c"), "occurred_at": now_iso(),
            "sku": sku, "location": location, "bin": bin_, "status": "available",
            "quantity": self._rng.randint(0, 60),
        }  # fmt: skip

    def _inbound(self) -> tuple[str, str, dict[str, Any]]:
        sku = self._rng.choice(self.skus)
        eta = (datetime.now(UTC) + timedelta(days=self._rng.randint(1, 20))).date()
        return "inbound", sku, {
            "type": "inbound", "event_id": self._id("i"), "occurred_at": now_iso(),
            "inbound_id": f"PO-{self._rng.randint(1, 3)}:{sku}", "sku": sku,
            "location": self._rng.choice(self.locations),
            "quantity": self._rng.randint(0, 100), "eta": eta.isoformat(),
        }  # fmt: skip


def encoded(item: tuple[str, str, dict[str, Any]]) -> tuple[str, bytes, bytes]:
    """(kind, key bytes, value bytes) ready for Producer.produce."""
    kind, sku, event = item
    return kind, sku.encode(), _encode(event)
