"""Location capacity (contract section 11) against real Redis, broker and processes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import READ_KEY, WRITE_KEY, Stack
from tests.integration.helpers import (
    allocate,
    availability,
    day,
    inbound,
    order,
    plan_of,
    poll,
    receipt,
)

pytestmark = pytest.mark.integration
R = {"Authorization": f"Bearer {READ_KEY}"}
W = {"Authorization": f"Bearer {WRITE_KEY}"}
CAPACITY = """
[[locations]]
name = "DC-EAST"
daily_capacity_units = 10

[[locations]]
name = "DC-WEST"
daily_capacity_units = 4
"""


def locations(base: str) -> dict[str, tuple[int, int, int]]:
    reply = httpx.get(f"{base}/v1/locations", headers=R, timeout=10)
    assert reply.status_code == 200, reply.text
    return {
        loc["name"]: (loc["daily_capacity_units"], loc["allocated_today"], loc["remaining_today"])
        for loc in reply.json()["locations"]
    }


def taken(result: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in result["lines"]:
        for a in line["allocations"]:
            out[a["location"]] = out.get(a["location"], 0) + a["quantity"]
    return out


# On the cluster (16 shards) the day's counts are claimed per reservation before the skus'
# parts are written (atp_service/store/capacity.py).
@pytest.mark.redis_kinds("single", "cluster")
@pytest.mark.config(CAPACITY)
def test_a_location_at_its_daily_capacity_is_passed_over(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    stack.produce([receipt("CAP-1", 20, "DC-EAST"), receipt("CAP-1", 20, "DC-WEST")])
    poll(lambda: availability(base, READ_KEY, "web", "CAP-1")["on_hand"], lambda v: v == 40)
    assert locations(base) == {"DC-EAST": (10, 0, 10), "DC-WEST": (4, 0, 4)}

    assert taken(allocate(base, order("CAP-o1", "web", **{"CAP-1": 6}))) == {"DC-EAST": 6}
    # No location can give 6 more whole today: DC-EAST its last 4, DC-WEST 2.
    assert taken(allocate(base, order("CAP-o2", "web", **{"CAP-1": 6}))) == {
        "DC-EAST": 4, "DC-WEST": 2
    }  # fmt: skip
    third = allocate(base, order("CAP-o3", "web", **{"CAP-1": 5}))
    assert taken(third) == {"DC-WEST": 2} and third["lines"][0]["unfilled"] == 3
    assert locations(base) == {"DC-EAST": (10, 10, 0), "DC-WEST": (4, 4, 0)}
    # Reads are not affected: the stock is there, only today's allocations stop.
    assert availability(base, READ_KEY, "web", "CAP-1")["available_to_sell"] == 40 - 14
    # A release gives no capacity back.
    assert httpx.delete(f"{base}/v1/allocations/CAP-o1", headers=W).status_code == 200
    full = allocate(base, order("CAP-o4", "web", **{"CAP-1": 1}))
    assert taken(full) == {} and full["lines"][0]["unfilled"] == 1
    assert locations(base)["DC-EAST"] == (10, 10, 0)


@pytest.mark.redis_kinds("single", "cluster")
@pytest.mark.config(CAPACITY)
def test_concurrent_allocations_never_pass_a_capacity(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api(workers=2)
    stack.produce([receipt(f"CAP-{s}", 50, loc) for s in "ABC" for loc in ("DC-EAST", "DC-WEST")])
    for s in "ABC":
        poll(
            lambda s=s: availability(base, READ_KEY, "web", f"CAP-{s}")["on_hand"],
            lambda v: v == 100,
        )

    def place(i: int) -> dict[str, int]:
        body = order(f"CAP-many-{i}", "web", **{f"CAP-{'ABC'[i % 3]}": 1 + i % 2})
        reply = httpx.post(f"{base}/v1/allocations", json=body, headers=W, timeout=20)
        assert reply.status_code == 201, reply.text
        return taken(reply.json())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(place, range(30)))
    total = {loc: sum(r.get(loc, 0) for r in results) for loc in ("DC-EAST", "DC-WEST")}
    assert total == {"DC-EAST": 10, "DC-WEST": 4}  # 45 units asked, 14 could be given
    assert locations(base) == {"DC-EAST": (10, 10, 0), "DC-WEST": (4, 4, 0)}


@pytest.mark.redis_kinds("single", "cluster")
@pytest.mark.config(CAPACITY.replace("daily_capacity_units = 10", "daily_capacity_units = 5"))
def test_backorders_converted_from_stock_count_against_capacity(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    stack.produce([inbound("CAP-B", "PO-C1", 20, day(2), "DC-EAST")])
    poll(lambda: availability(base, READ_KEY, "web", "CAP-B")["atp"], lambda atp: atp != [])
    first = allocate(base, order("CAP-b1", "web", True, **{"CAP-B": 8}))
    assert first["lines"][0]["backordered"] == 8
    stack.produce([receipt("CAP-B", 12, "DC-EAST")])
    # DC-EAST may give 5 today: 5 are confirmed from stock, 3 stay promised from inbound.
    line = poll(lambda: plan_of(base, "CAP-b1")["lines"][0], lambda line: line["allocations"] != [])
    assert sum(a["quantity"] for a in line["allocations"]) == 5
    assert line["backordered"] == 3 and line["promise_date"] == day(2)
    assert locations(base)["DC-EAST"] == (5, 5, 0)
