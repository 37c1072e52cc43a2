"""The service's producers hash keys as other clients do (murmur2), so a sku's events land on
one partition whoever produces them.

The order system here is kafka-python (another client library, murmur2 by default): it
produces receipts and then releases of the reservations the API made. Every sku's messages
on the reservations topic, the API's `reservation_created` and kafka-python's release, must
share a partition, and the fold must end with the stock free again.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import httpx
import pytest
from kafka import KafkaProducer  # type: ignore[import-untyped]
from kafka.partitioner.default import murmur2  # type: ignore[import-untyped]

from tests.conftest import READ_KEY, WRITE_KEY, Stack
from tests.faults.harness import PARTITIONS, read_all
from tests.integration.helpers import now_iso, receipt

pytestmark = pytest.mark.integration

SKUS = [f"SKU-P{i:02d}" for i in range(20)]


def send(producer: KafkaProducer, topic: str, event: dict[str, object]) -> None:
    producer.send(topic, key=str(event["sku"]).encode(), value=json.dumps(event).encode())


def test_a_skus_events_share_a_partition_whichever_client_produced_them(stack: Stack) -> None:
    topics = stack.settings.topics
    stack.start_consumer()
    base = stack.start_api()
    other = KafkaProducer(bootstrap_servers=stack.settings.kafka.bootstrap, acks="all")
    try:
        for sku in SKUS:
            send(other, topics.movements, receipt(sku, 10))
        other.flush(30)
        read = {"Authorization": f"Bearer {READ_KEY}"}

        def on_hand(sku: str) -> int:
            reply = httpx.get(f"{base}/v1/availability/web/{sku}", headers=read, timeout=5)
            return int(reply.json()["on_hand"]) if reply.status_code == 200 else -1

        deadline = time.monotonic() + 30
        while any(on_hand(sku) != 10 for sku in SKUS):
            assert time.monotonic() < deadline, "the receipts were not applied"
            time.sleep(0.2)
        write = {"Authorization": f"Bearer {WRITE_KEY}"}
        for n, sku in enumerate(SKUS):
            order = {
                "order_id": f"P-{n}",
                "channel": "web",
                "lines": [{"line_id": "1", "sku": sku, "quantity": 2}],
            }
            reply = httpx.post(f"{base}/v1/allocations", json=order, headers=write, timeout=10)
            assert reply.status_code == 201, reply.text
            (held,) = reply.json()["lines"][0]["allocations"]
            send(other, topics.reservations, {
                "type": "reservation_released", "event_id": f"rel-{n}", "occurred_at": now_iso(),
                "reservation_id": held["reservation_id"], "sku": sku,
            })  # fmt: skip
        other.flush(30)
    finally:
        other.close()

    partitions: dict[str, set[int]] = defaultdict(set)
    kinds: dict[str, set[str]] = defaultdict(set)
    for message in read_all(stack.settings.kafka.bootstrap, topics.reservations):
        sku = message.key().decode()
        partitions[sku].add(message.partition())
        kinds[sku].add(json.loads(message.value())["type"])
    for sku in SKUS:
        assert kinds[sku] == {"reservation_created", "reservation_released"}, sku
        assert partitions[sku] == {(murmur2(sku.encode()) & 0x7FFFFFFF) % PARTITIONS}, sku

    # Folded in order on one partition: every release met its reservation.
    deadline = time.monotonic() + 30
    while True:
        docs = [
            httpx.get(f"{base}/v1/availability/web/{sku}", headers=read, timeout=5).json()
            for sku in SKUS
        ]
        if all(d["reserved"] == 0 and d["available_to_sell"] == 10 for d in docs):
            break
        assert time.monotonic() < deadline, [d for d in docs if d["reserved"]][:3]
        time.sleep(0.2)
