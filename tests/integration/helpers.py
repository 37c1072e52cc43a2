"""Small helpers for integration tests: event builders, allocation requests, polling reads,
reading a topic back, and a receipt's write for tests that write to a store directly."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from confluent_kafka import Consumer

from atp_service.config import parse_config
from atp_service.model import projector_for
from streams.changeset import ChangeSet, build_changeset
from streams.state import BinStock, SkuState
from tests.conftest import WRITE_KEY, Stack, config_text

T = TypeVar("T")
_ids = itertools.count(1)
_W = {"Authorization": f"Bearer {WRITE_KEY}"}

WINDOW_MS = 7 * 86_400_000


def now_iso(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat().replace("+00:00", "Z")


def receipt(
    sku: str, quantity: int, location: str = "DC-EAST", bin_: str = "A-1", **kw: Any
) -> dict[str, Any]:
    return {
        "type": "bin_movement", "event_id": kw.pop("event_id", f"m-{next(_ids)}"),
        "occurred_at": kw.pop("occurred_at", now_iso()), "sku": sku, "location": location,
        "quantity": quantity, "from_bin": None, "from_status": None,
        "to_bin": bin_, "to_status": "available", "reservation_id": None, **kw,
    }  # fmt: skip


def shipment(
    sku: str,
    quantity: int,
    reservation_id: str | None,
    location: str = "DC-EAST",
    bin_: str = "A-1",
) -> dict[str, Any]:
    return {
        "type": "bin_movement", "event_id": f"m-{next(_ids)}", "occurred_at": now_iso(),
        "sku": sku, "location": location, "quantity": quantity,
        "from_bin": bin_, "from_status": "available", "to_bin": None, "to_status": None,
        "reservation_id": reservation_id,
    }  # fmt: skip


def reservation(
    sku: str,
    quantity: int,
    reservation_id: str,
    channel: str = "web",
    location: str = "DC-EAST",
    expires_at: str | None = None,
) -> dict[str, Any]:
    return {
        "type": "reservation_created", "event_id": f"r-{next(_ids)}", "occurred_at": now_iso(),
        "reservation_id": reservation_id, "sku": sku, "channel": channel, "location": location,
        "quantity": quantity, "expires_at": expires_at,
    }  # fmt: skip


def day(offset: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


def inbound(sku: str, inbound_id: str, quantity: int, eta: str, location: str) -> dict[str, Any]:
    return {
        "type": "inbound", "event_id": f"i-{inbound_id}-{now_iso()}", "occurred_at": now_iso(),
        "inbound_id": inbound_id, "sku": sku, "location": location, "quantity": quantity,
        "eta": eta,
    }  # fmt: skip


def order(
    order_id: str, channel: str = "web", backorder: bool = False, **lines: int
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "channel": channel,
        "backorder": backorder,
        "lines": [
            {"line_id": str(i + 1), "sku": sku, "quantity": q}
            for i, (sku, q) in enumerate(lines.items())
        ],
    }


def allocate(base: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = httpx.post(f"{base}/v1/allocations", json=body, headers=_W, timeout=10)
    assert reply.status_code == 201, reply.text
    result: dict[str, Any] = reply.json()
    return result


def plan_of(base: str, order_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{base}/v1/allocations/{order_id}", headers=_W, timeout=10)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def poll(
    fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 30.0, pause: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s; last value: {value!r}")
        time.sleep(pause)
        value = fetch()
    return value


def availability(base: str, key: str, channel: str, sku: str) -> dict[str, Any]:
    reply = httpx.get(
        f"{base}/v1/availability/{channel}/{sku}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=5,
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def read_topic(stack: Stack, topic: str, expected: int, timeout: float = 30.0) -> list[object]:
    consumer = Consumer(
        {
            "bootstrap.servers": stack.settings.kafka.bootstrap,
            "group.id": f"reader-{topic}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    found = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is None:
                    found.append(message)
    finally:
        consumer.close()
    return found


def receipt_write(redis_url: str, sku: str, event_ids: list[str], now_ms: int) -> ChangeSet:
    """The write of a receipt of 5 at DC-EAST for ``sku``, marking ``event_ids``."""
    projector = projector_for(parse_config(config_text(redis_url)))
    state = SkuState(sku, (BinStock("DC-EAST", "A1", "available", 5),))
    changes = build_changeset([state], {}, projector, now_ms * 1000, seen={sku: event_ids})
    for write in changes.skus:
        write.expected_version = None
    return changes
