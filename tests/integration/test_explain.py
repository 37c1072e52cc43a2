"""GET /v1/availability/{channel}/{sku}/explain (contract section 13) against real services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import ADMIN_KEY, READ_KEY, Stack
from tests.integration.helpers import availability, now_iso, poll, receipt, reservation

pytestmark = pytest.mark.integration
R = {"Authorization": f"Bearer {READ_KEY}"}


def test_explain_shows_the_figures_behind_a_value(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    soon = (datetime.now(UTC).date() + timedelta(days=3)).isoformat()
    far = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()  # beyond web's 14 days
    damaged = receipt("X-1", 2, "DC-EAST", bin_="D-1", event_id="m-damaged")
    damaged["to_status"] = "damaged"
    events = [
        receipt("X-1", 20, "DC-EAST", event_id="m-east"),
        receipt("X-1", 5, "DC-WEST", event_id="m-west"),
        damaged,
        reservation("X-1", 3, "R-1", location="DC-EAST"),
        {"type": "inbound", "event_id": "i-1", "occurred_at": now_iso(), "inbound_id": "PO-7:1",
         "sku": "X-1", "location": "DC-WEST", "quantity": 50, "eta": soon},
        {"type": "inbound", "event_id": "i-2", "occurred_at": now_iso(), "inbound_id": "PO-8:1",
         "sku": "X-1", "location": "DC-EAST", "quantity": 9, "eta": far},
    ]  # fmt: skip
    stack.produce(events)
    poll(lambda: availability(base, READ_KEY, "web", "X-1"), lambda d: d["reserved"] == 3)
    put = httpx.put(
        f"{base}/v1/channels/marketplace/safety-stock/X-1",
        json={"quantity": 4},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert put.status_code == 200

    web = httpx.get(f"{base}/v1/availability/web/X-1/explain", headers=R, timeout=10).json()
    why = web.pop("explain")
    assert web == {**availability(base, READ_KEY, "web", "X-1"), "as_of": web["as_of"]}
    assert web["available_to_sell"] == 22
    assert why["locations"] == [  # in web's order
        {"location": "DC-EAST", "on_hand": 20, "reserved": 3,
         "by_status": {"available": 20, "damaged": 2}},
        {"location": "DC-WEST", "on_hand": 5, "reserved": 0, "by_status": {"available": 5}},
    ]  # fmt: skip
    assert why["safety_stock"] == {"value": 0, "source": "channel"}
    assert why["buffers"] == {"min_available": 0, "max_available": None}
    # Only the line within web's horizon is counted.
    assert why["inbound"] == [
        {"inbound_id": "PO-7:1", "location": "DC-WEST", "eta": soon, "quantity": 50}
    ]
    assert why["components"] is None
    recent = [e["event_id"] for e in why["recent_events"]]
    assert set(recent) == {e["event_id"] for e in events} and len(recent) == 6
    # Newest first: within one topic (one partition for the sku) the order is known.
    assert [e for e in recent if e.startswith("m-")] == ["m-damaged", "m-west", "m-east"]
    assert all(e["type"] and e["occurred_at"].endswith("Z") for e in why["recent_events"])

    market = httpx.get(f"{base}/v1/availability/marketplace/X-1/explain", headers=R).json()
    assert market["explain"]["safety_stock"] == {"value": 4, "source": "api_override"}
    assert [loc["location"] for loc in market["explain"]["locations"]] == ["DC-EAST"]
    assert market["available_to_sell"] == 20 - 3 - 4
    missing = httpx.get(f"{base}/v1/availability/nope/X-1/explain", headers=R)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
