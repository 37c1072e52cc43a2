"""Contract sections 3 and 12: for each (channel, sku) the last message on the availability
topic carries the value a read returns once the service is idle, whichever path changed it,
and the last message on the stock states topic carries the state of that value.

The API's changes (allocations, releases, safety-stock changes) reach the topic through the
store's outbox and a consumer's sweep, while the consumer publishes its own at once: they
interleave here with receipts and shipments on 40 skus, and a sync job that keeps the last
message per key (a compacted topic) must end on every read's value.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ADMIN_KEY, READ_KEY, WRITE_KEY, Stack
from tests.faults.harness import read_all
from tests.integration.helpers import receipt, shipment

pytestmark = pytest.mark.integration

SKUS = [f"SKU-O{i:02d}" for i in range(40)]
CHANNELS = ("web", "marketplace")
LOW_STOCK = {"web": 3, "marketplace": 0}  # the test channels' low_stock_threshold


def state_of(value: int, channel: str) -> str:
    if value <= 0:
        return "out_of_stock"
    return "low_stock" if value <= LOW_STOCK[channel] else "in_stock"


@pytest.mark.parametrize("stocked", [30, 4], ids=["deep-stock", "near-zero"])
def test_the_last_message_per_channel_and_sku_is_the_current_value(
    stack: Stack, stocked: int
) -> None:
    rng = random.Random(7)
    stack.start_consumer()
    base = stack.start_api()
    read = {"Authorization": f"Bearer {READ_KEY}"}
    write = {"Authorization": f"Bearer {WRITE_KEY}"}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    client = httpx.Client(base_url=base, timeout=10)
    producer = stack.producer()
    stack.produce([receipt(sku, stocked) for sku in SKUS], producer)
    producer.flush(10)
    time.sleep(1.0)
    orders: list[str] = []
    made = iter(range(10_000))

    def allocate() -> None:
        n = next(made)
        sku = rng.choice(SKUS)
        body = {"order_id": f"O-{n}", "channel": rng.choice(CHANNELS),
                "lines": [{"line_id": "1", "sku": sku, "quantity": rng.randint(1, 3)}]}  # fmt: skip
        reply = client.post("/v1/allocations", json=body, headers=write)
        assert reply.status_code in (200, 201), reply.text
        orders.append(body["order_id"])

    def release() -> None:
        if orders:
            order_id = orders.pop(rng.randrange(len(orders)))
            assert client.delete(f"/v1/allocations/{order_id}", headers=write).status_code == 200

    def safety_stock() -> None:
        path = f"/v1/channels/{rng.choice(CHANNELS)}/safety-stock/{rng.choice(SKUS)}"
        if rng.random() < 0.5:
            assert (
                client.put(path, json={"quantity": rng.randint(0, 8)}, headers=admin).status_code
                == 200
            )
        else:
            assert client.delete(path, headers=admin).status_code == 200

    def stock() -> None:
        sku = rng.choice(SKUS)
        event = receipt(sku, rng.randint(1, 4)) if rng.random() < 0.5 else shipment(sku, 1, None)
        stack.produce([event], producer)
        producer.poll(0)

    steps: list[Callable[[], None]] = [allocate, allocate, release, safety_stock, stock, stock]
    for _ in range(400):
        rng.choice(steps)()
        if rng.random() < 0.1:
            time.sleep(0.05)
    producer.flush(10)

    def last(topic: str, field: str) -> dict[tuple[str, str], object]:
        out: dict[tuple[str, str], object] = {}
        for message in read_all(stack.settings.kafka.bootstrap, topic):
            event = json.loads(message.value())
            out[event["channel"], event["sku"]] = event[field]
            if field == "state":
                assert event["state"] != event["previous_state"], event
        return out

    def differences() -> list[tuple[str, str, object, object]]:
        topics = stack.settings.topics
        values = last(topics.availability, "available_to_sell")
        states = last(topics.stock_states, "state")
        wrong: list[tuple[str, str, object, object]] = []
        for sku in SKUS:
            for channel in CHANNELS:
                now = client.get(f"/v1/availability/{channel}/{sku}", headers=read).json()
                value = now["available_to_sell"]
                if values.get((channel, sku), 0) != value:
                    wrong.append((channel, sku, values.get((channel, sku)), value))
                # Never announced: out of stock since it was first seen.
                if states.get((channel, sku), "out_of_stock") != state_of(value, channel):
                    wrong.append(
                        (channel, sku, states.get((channel, sku)), state_of(value, channel))
                    )
        return wrong

    # Idle: every write published; give the sweeps and their checks time to settle.
    deadline = time.monotonic() + 30
    while wrong := differences():
        assert time.monotonic() < deadline, (
            f"{len(wrong)} of {len(SKUS) * 2} end stale: {wrong[:5]}"
        )
        time.sleep(1.0)
