"""Produce with confluent-kafka, consume with `atp consume`, read back with `atp serve`."""

from __future__ import annotations

import json
import signal
import time

import httpx
import msgspec
import pytest

from tests.conftest import READ_KEY, Stack
from tests.faults.harness import redis_for, wait_applying
from tests.integration.helpers import (
    availability,
    now_iso,
    poll,
    read_topic,
    receipt,
    reservation,
    shipment,
)

pytestmark = pytest.mark.integration
# The consumer's path runs on a single Redis and on a Redis Cluster (shards on one Redis
# are covered by the changes-feed tests, which page across them); the API-only checks run
# on a single Redis.
BOTH = pytest.mark.redis_kinds("single", "cluster")


@BOTH
def test_events_flow_to_http_reads(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    stack.produce(
        [
            receipt("SKU-1", 20, "DC-EAST"),
            receipt("SKU-1", 4, "DC-WEST"),
            reservation("SKU-1", 3, "ORD-1:1"),
            {
                "type": "inbound",
                "event_id": "i-1",
                "occurred_at": now_iso(),
                "inbound_id": "PO-1:1",
                "sku": "SKU-1",
                "location": "DC-EAST",
                "quantity": 50,
                "eta": "2099-01-01",
            },
        ]
    )
    web = poll(
        lambda: availability(base, READ_KEY, "web", "SKU-1"),
        lambda doc: doc["reserved"] == 3 and doc["on_hand"] == 24,
    )
    assert web["available_to_sell"] == 21
    assert web["safety_stock"] == 0
    assert web["atp"] == []  # the PO is far beyond the 14-day horizon
    market = availability(base, READ_KEY, "marketplace", "SKU-1")
    # marketplace sells only from DC-EAST and keeps 5 back.
    assert (market["on_hand"], market["reserved"], market["available_to_sell"]) == (20, 3, 12)

    # A shipment against the reservation drops on_hand and reserved together.
    stack.produce([shipment("SKU-1", 3, "ORD-1:1")])
    web = poll(
        lambda: availability(base, READ_KEY, "web", "SKU-1"), lambda doc: doc["on_hand"] == 21
    )
    assert (web["reserved"], web["available_to_sell"]) == (0, 21)


def test_unknown_sku_reads_zeros_and_unknown_channel_is_404(stack: Stack) -> None:
    base = stack.start_api()
    doc = availability(base, READ_KEY, "marketplace", "NEVER-SEEN")
    assert doc["available_to_sell"] == doc["on_hand"] == doc["reserved"] == 0
    assert doc["safety_stock"] == 5
    assert doc["atp"] == []
    reply = httpx.get(
        f"{base}/v1/availability/nope/SKU-1", headers={"Authorization": f"Bearer {READ_KEY}"}
    )
    assert reply.status_code == 404
    assert reply.headers["content-type"].startswith("application/problem+json")


def test_bulk_query_keeps_the_order_asked(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    stack.produce([receipt(f"Q-{i}", i + 1) for i in range(5)])
    skus = [f"Q-{i}" for i in (4, 0, 3, 9, 1)]

    def query() -> list[int]:
        reply = httpx.post(
            f"{base}/v1/availability/web/query",
            json={"skus": skus},
            headers={"Authorization": f"Bearer {READ_KEY}"},
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["channel"] == "web"
        assert [item["sku"] for item in body["items"]] == skus
        return [item["available_to_sell"] for item in body["items"]]

    assert poll(query, lambda values: values == [5, 1, 4, 0, 2]) == [5, 1, 4, 0, 2]
    for bad in ({"skus": []}, {"skus": [f"S{i}" for i in range(1001)]}, {"sku": ["x"]}):
        reply = httpx.post(
            f"{base}/v1/availability/web/query",
            json=bad,
            headers={"Authorization": f"Bearer {READ_KEY}"},
        )
        assert reply.status_code == 400, bad
        assert reply.headers["content-type"].startswith("application/problem+json")


def test_poison_messages_go_to_dead_letter_with_headers_and_the_consumer_goes_on(
    stack: Stack,
) -> None:
    stack.start_consumer()
    base = stack.start_api()
    t = stack.settings.topics
    poison = [
        (t.movements, b"SKU-P", b"{not json"),
        (t.movements, b"SKU-P", json.dumps({"type": "bin_movement", "event_id": "bad-1", "occurred_at": now_iso(), "sku": "SKU-P", "location": "DC-EAST", "quantity": -5, "to_bin": "A", "to_status": "available"}).encode()),
        (t.movements, b"SKU-P", json.dumps({"type": "teleport", "event_id": "bad-2", "occurred_at": now_iso(), "sku": "SKU-P"}).encode()),
        (t.reservations, b"SKU-P", msgspec.json.encode(reservation("SKU-P", 1, "X:1", channel="pigeon"))),
        (t.movements, b"SKU-P", json.dumps({"type": "bin_movement", "event_id": "bad-3", "occurred_at": now_iso(), "sku": "SKU-P", "location": "DC-EAST", "quantity": "ten", "to_bin": "A", "to_status": "available"}).encode()),
    ]  # fmt: skip
    stack.produce(poison)
    stack.produce([receipt("SKU-P", 7)])
    doc = poll(lambda: availability(base, READ_KEY, "web", "SKU-P"), lambda d: d["on_hand"] == 7)
    assert doc["available_to_sell"] == 7

    dead = read_topic(stack, t.dead_letter, expected=len(poison))
    assert len(dead) == len(poison)
    sent = {(topic, value) for topic, _, value in poison}
    for message in dead:
        headers = {k: v.decode() for k, v in message.headers()}
        assert headers["atp-error"]
        assert (headers["atp-source-topic"], message.value()) in sent
        assert int(headers["atp-source-partition"]) >= 0
        assert int(headers["atp-source-offset"]) >= 0
    reasons = " | ".join(dict(m.headers())["atp-error"].decode() for m in dead)
    assert "not JSON" in reasons and "pigeon" in reasons and ">= 1" in reasons


def test_availability_changes_are_published(stack: Stack) -> None:
    stack.start_consumer()
    stack.produce([receipt("SKU-A", 9)])
    messages = read_topic(stack, stack.settings.topics.availability, expected=2)
    bodies = {(m.key(), json.loads(m.value())["channel"]): json.loads(m.value()) for m in messages}
    assert bodies[(b"SKU-A", "web")]["available_to_sell"] == 9
    assert bodies[(b"SKU-A", "marketplace")]["available_to_sell"] == 4
    assert set(bodies[(b"SKU-A", "web")]) == {"channel", "sku", "available_to_sell", "as_of"}


@BOTH
def test_reservation_expires_within_a_second_with_no_event(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    stack.produce([receipt("SKU-E", 10)])
    poll(lambda: availability(base, READ_KEY, "web", "SKU-E"), lambda d: d["on_hand"] == 10)
    expires = now_iso(3.0)
    stack.produce([reservation("SKU-E", 4, "CART-1", expires_at=expires)])
    poll(lambda: availability(base, READ_KEY, "web", "SKU-E"), lambda d: d["reserved"] == 4)
    doc = poll(
        lambda: availability(base, READ_KEY, "web", "SKU-E"),
        lambda d: d["reserved"] == 0,
        timeout=10,
        pause=0.02,
    )
    seen_at = time.time()
    expiry = msgspec.json.decode(
        json.dumps(expires).encode(), type=__import__("datetime").datetime
    ).timestamp()
    assert doc["available_to_sell"] == 10
    assert seen_at - expiry < 1.0, f"expiry visible {seen_at - expiry:.3f}s late"


@BOTH
def test_consumer_killed_mid_stream_loses_and_doubles_nothing(stack: Stack) -> None:
    base = stack.start_api()
    skus = [f"K-{i}" for i in range(40)]
    events = [receipt(sku, 1, event_id=f"kill-{n}-{sku}") for n in range(50) for sku in skus]
    consumer = stack.start_consumer()
    producer = stack.producer()
    stack.produce(events[:1000], producer)
    producer.flush(30)
    # Killed once it has written (not while it still joins its group); more comes after.
    wait_applying(stack, redis_for(stack), consumer, 0, "the first consumer")
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(10)
    stack.produce(events[1000:], producer)
    # and redeliver some already-produced events: same event_id, new offsets
    stack.produce(events[:300], producer)
    assert producer.flush(30) == 0
    stack.start_consumer()
    for sku in skus:
        doc = poll(
            lambda sku=sku: availability(base, READ_KEY, "web", sku), lambda d: d["on_hand"] >= 50
        )
        assert doc["on_hand"] == 50, sku
    time.sleep(0.5)
    assert all(availability(base, READ_KEY, "web", sku)["on_hand"] == 50 for sku in skus)


def test_sigterm_finishes_the_batch_and_exits_zero(stack: Stack) -> None:
    consumer = stack.start_consumer()
    stack.produce([receipt("SKU-T", 2)])
    client = stack.redis()
    poll(lambda: client.exists(stack.layout.sku_key("SKU-T")), bool)
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(20) == 0
