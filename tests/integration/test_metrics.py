"""Both /metrics endpoints expose what operators alert on (issue 6)."""

from __future__ import annotations

import httpx
import pytest

from atp_service.local.services import free_port
from tests.conftest import READ_KEY, WRITE_KEY, Stack
from tests.integration.helpers import availability, now_iso, poll, receipt, reservation

pytestmark = pytest.mark.integration


def test_consumer_and_api_metrics(stack: Stack) -> None:
    port = free_port()
    text = stack.config_path.read_text().replace("metrics_port = 0", f"metrics_port = {port}")
    stack.config_path.write_text(text)
    stack.start_consumer()
    base = stack.start_api()
    stack.produce([receipt("MET-1", 5)])
    stack.produce([(stack.settings.topics.movements, b"MET-1", b"not json")])
    poll(
        lambda: availability(base, READ_KEY, "web", "MET-1"),
        lambda d: d["on_hand"] == 5,
        timeout=30,
    )
    stack.produce([reservation("MET-1", 1, "CART-M", expires_at=now_iso(2.0))])
    poll(
        lambda: availability(base, READ_KEY, "web", "MET-1"),
        lambda d: d["reserved"] == 1,
        timeout=10,
    )
    poll(
        lambda: availability(base, READ_KEY, "web", "MET-1"),
        lambda d: d["reserved"] == 0,
        timeout=10,
    )
    order = {
        "order_id": "MET-O",
        "channel": "web",
        "lines": [{"line_id": "1", "sku": "MET-1", "quantity": 9}],
    }
    assert (
        httpx.post(
            f"{base}/v1/allocations",
            json=order,
            headers={"Authorization": f"Bearer {WRITE_KEY}"},
            timeout=10,
        ).status_code
        == 201
    )

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text

    consumer = poll(scrape, lambda t: "atp_reservation_expiries_total 1.0" in t, timeout=20)
    for needle in (
        'atp_events_total{outcome="applied",type="bin_movement"}',
        'atp_events_total{outcome="dead_letter",type="invalid"} 1.0',
        "atp_consumer_lag_messages{",
        "atp_consumer_batch_size_bucket",
        "atp_fold_duration_seconds_bucket",
        "atp_event_to_visible_seconds_bucket",
        "atp_swept_skus_total",
        "atp_availability_events_total",
    ):
        assert needle in consumer, needle
    api = httpx.get(f"{base}/metrics").text
    assert 'atp_allocation_units_total{outcome="allocated"} 5.0' in api
    assert 'atp_allocation_units_total{outcome="unfilled"} 4.0' in api
    assert (
        'atp_http_request_duration_seconds_count{route="/v1/availability/{channel:str}/{sku:str}",status="200"}'
        in api
    )
