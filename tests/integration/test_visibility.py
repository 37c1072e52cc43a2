"""Contract section 4 (amended): an allocation is visible to the next read through the API
process that answered it, and through any other API process within 1 second, even where
that process had the sku in its read cache."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import READ_KEY, WRITE_KEY, Stack
from tests.integration.helpers import receipt

pytestmark = pytest.mark.integration


def test_an_allocation_is_visible_through_every_api_process_within_a_second(stack: Stack) -> None:
    stack.start_consumer()
    first, second = stack.start_apis(2)
    read = {"Authorization": f"Bearer {READ_KEY}"}
    stack.produce([receipt("SKU-V", 10)])

    def reserved(base: str) -> int:
        reply = httpx.get(f"{base}/v1/availability/web/SKU-V", headers=read, timeout=5)
        return int(reply.json()["reserved"]) if reply.json()["on_hand"] == 10 else -1

    deadline = time.monotonic() + 30
    while reserved(first) != 0 or reserved(second) != 0:  # both caches now hold the sku
        assert time.monotonic() < deadline, "the receipt was not applied"
        time.sleep(0.1)
    for n in range(5):
        order = {
            "order_id": f"V-{n}",
            "channel": "web",
            "lines": [{"line_id": "1", "sku": "SKU-V", "quantity": 1}],
        }
        answer = httpx.post(
            f"{first}/v1/allocations",
            json=order,
            headers={"Authorization": f"Bearer {WRITE_KEY}"},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        answered = time.monotonic()
        assert reserved(first) == n + 1  # the process that answered: the next read
        while reserved(second) != n + 1:
            assert time.monotonic() - answered < 1.0, f"order {n}: not visible elsewhere within 1 s"
            time.sleep(0.01)
