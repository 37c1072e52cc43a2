"""Small helpers for integration tests: event builders and polling reads."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
_ids = itertools.count(1)


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
