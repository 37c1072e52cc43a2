"""Allocation over HTTP against real Redis and the real broker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, READ_KEY, WRITE_KEY, Stack
from tests.integration.helpers import availability, now_iso, order, poll, read_topic, receipt

pytestmark = pytest.mark.integration
W = {"Authorization": f"Bearer {WRITE_KEY}"}


def stocked(stack: Stack, base: str, events: list[dict[str, Any]], sku: str, on_hand: int) -> None:
    stack.produce(events)
    poll(lambda: availability(base, READ_KEY, "web", sku), lambda d: d["on_hand"] == on_hand)


@pytest.mark.redis_kinds
def test_allocate_reserve_read_release(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    stocked(stack, base, [receipt("A-1", 4, "DC-EAST"), receipt("A-1", 10, "DC-WEST")], "A-1", 14)
    body = order("ORD-1", **{"A-1": 6})
    reply = httpx.post(f"{base}/v1/allocations", json=body, headers=W, timeout=10)
    assert reply.status_code == 201, reply.text
    result = reply.json()
    assert result["status"] == "allocated"
    (line,) = result["lines"]
    # DC-EAST (first in web's order) cannot cover 6, DC-WEST can: the whole line goes there.
    assert line["allocations"] == [
        {"location": "DC-WEST", "quantity": 6, "reservation_id": "ORD-1:1:DC-WEST"}
    ]
    assert (line["backordered"], line["unfilled"], line["promise_date"]) == (0, 0, None)
    # Visible to the very next read.
    doc = availability(base, READ_KEY, "web", "A-1")
    assert (doc["reserved"], doc["available_to_sell"]) == (6, 8)
    # A repeat is 200 with the same result and reserves nothing; another body is 409.
    again = httpx.post(f"{base}/v1/allocations", json=body, headers=W, timeout=10)
    assert again.status_code == 200 and again.json() == result
    other = httpx.post(
        f"{base}/v1/allocations", json=order("ORD-1", **{"A-1": 1}), headers=W, timeout=10
    )
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("application/problem+json")
    assert availability(base, READ_KEY, "web", "A-1")["reserved"] == 6
    assert httpx.get(f"{base}/v1/allocations/ORD-1", headers=W).json() == result
    # The reservation event reached the reservations topic; the consumer treats it as applied.
    events = read_topic(stack, stack.settings.topics.reservations, expected=1)
    created = json.loads(events[0].value())
    assert (
        created["type"] == "reservation_created" and created["reservation_id"] == "ORD-1:1:DC-WEST"
    )
    stack.produce([receipt("A-1", 1, "DC-EAST")])
    doc = poll(lambda: availability(base, READ_KEY, "web", "A-1"), lambda d: d["on_hand"] == 15)
    assert doc["reserved"] == 6  # not doubled by consuming its own event
    released = httpx.delete(f"{base}/v1/allocations/ORD-1", headers=W, timeout=10)
    assert released.status_code == 200 and released.json()["status"] == "released"
    assert availability(base, READ_KEY, "web", "A-1")["reserved"] == 0
    assert httpx.delete(f"{base}/v1/allocations/ORD-1", headers=W, timeout=10).status_code == 200
    assert httpx.delete(f"{base}/v1/allocations/NOPE", headers=W, timeout=10).status_code == 404
    assert httpx.get(f"{base}/v1/allocations/NOPE", headers=W, timeout=10).status_code == 404


def test_nested_safety_stock_marketplace_stops_at_five_web_sells_to_zero(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    stocked(stack, base, [receipt("N-1", 10, "DC-EAST")], "N-1", 10)
    market = httpx.post(
        f"{base}/v1/allocations",
        json=order("M-1", "marketplace", **{"N-1": 8}),
        headers=W,
        timeout=10,
    ).json()
    assert market["lines"][0]["allocations"][0]["quantity"] == 5
    assert market["lines"][0]["unfilled"] == 3
    assert availability(base, READ_KEY, "marketplace", "N-1")["available_to_sell"] == 0
    web = httpx.post(
        f"{base}/v1/allocations", json=order("W-1", **{"N-1": 8}), headers=W, timeout=10
    ).json()
    assert web["lines"][0]["allocations"][0]["quantity"] == 5
    assert availability(base, READ_KEY, "web", "N-1")["available_to_sell"] == 0


@pytest.mark.redis_kinds
def test_backorder_promises_from_inbound(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    stack.produce([
        receipt("B-1", 2, "DC-EAST"),
        {"type": "inbound", "event_id": "i-b1", "occurred_at": now_iso(), "inbound_id": "PO-9:1",
         "sku": "B-1", "location": "DC-WEST", "quantity": 5, "eta": "2099-01-01"},
        {"type": "inbound", "event_id": "i-b2", "occurred_at": now_iso(), "inbound_id": "PO-9:2",
         "sku": "B-1", "location": "DC-EAST", "quantity": 3, "eta": now_iso()[:10]},
    ])  # fmt: skip
    poll(
        lambda: availability(base, READ_KEY, "web", "B-1"), lambda d: d["on_hand"] == 2 and d["atp"]
    )
    reply = httpx.post(
        f"{base}/v1/allocations",
        json=order("BO-1", backorder=True, **{"B-1": 7}),
        headers=W,
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    (line,) = reply.json()["lines"]
    assert line["allocations"][0]["quantity"] == 2
    # 3 more are due today at DC-EAST; the PO in 2099 is beyond the 14-day horizon.
    assert (line["backordered"], line["unfilled"], line["promise_date"]) == (3, 2, now_iso()[:10])


def test_input_checks_name_the_field(stack: Stack) -> None:
    base = stack.start_api()
    cases = [
        ({"order_id": "X", "channel": "web", "lines": []}, 400, "lines"),
        (order("X", **{"S": 0}), 400, "quantity"),
        ({"order_id": "X", "channel": "web", "lines": [{"line_id": "1", "sku": "S", "quantity": 1}, {"line_id": "1", "sku": "T", "quantity": 1}]}, 400, "line_id"),
        (order("X", "pigeon", **{"S": 1}), 404, "pigeon"),
        ({"order_id": "X", "channel": "web", "lines": [{"line_id": "1", "sku": "S"}]}, 400, "quantity"),
        (order("X", **{"S": 10**9}), 400, "quantity"),
    ]  # fmt: skip
    for body, status, word in cases:
        reply = httpx.post(f"{base}/v1/allocations", json=body, headers=W, timeout=10)
        assert reply.status_code == status, (body, reply.text)
        assert word in reply.json()["detail"], reply.text
    too_many = {"orders": [order(f"O-{i}", **{"S": 1}) for i in range(10_001)]}
    reply = httpx.post(f"{base}/v1/allocations/batch", json=too_many, headers=W, timeout=30)
    assert reply.status_code == 400 and "orders" in reply.json()["detail"]
    for method, path in (
        ("POST", "/v1/allocations"),
        ("GET", "/v1/allocations/X"),
        ("DELETE", "/v1/allocations/X"),
    ):
        assert (
            httpx.request(method, f"{base}{path}", json=order("X", **{"S": 1})).status_code == 401
        )
        assert (
            httpx.request(
                method,
                f"{base}{path}",
                json=order("X", **{"S": 1}),
                headers={"Authorization": f"Bearer {READ_KEY}"},
            ).status_code
            == 403
        )


def test_the_fast_path_answers_exactly_as_the_framework_route(stack: Stack) -> None:
    """POST /v1/allocations is answered below Litestar in the common case (atp_service/fast.py);
    a query string sends the same request through the Litestar route. Both must answer the
    same status, headers and body, for a new order, a repeat and a conflicting body."""
    stack.start_consumer()
    base = stack.start_api()
    stocked(stack, base, [receipt("F-1", 20, "DC-EAST")], "F-1", 20)
    url = f"{base}/v1/allocations"

    def both(body: dict[str, Any]) -> tuple[httpx.Response, httpx.Response]:
        fast = httpx.post(url, json=body, headers={**W, "X-Correlation-Id": "cid-1"}, timeout=10)
        full = httpx.post(url, params={"via": "framework"}, json={**body, "order_id": body["order_id"] + "-2"},
                          headers={**W, "X-Correlation-Id": "cid-1"}, timeout=10)  # fmt: skip
        return fast, full

    def same(fast: httpx.Response, full: httpx.Response, order_id: str) -> None:
        assert fast.status_code == full.status_code, (fast.text, full.text)
        # The server's date may tick between the two; the body's length differs by the id.
        varying = {"date", "content-length"}
        assert {k: v for k, v in fast.headers.items() if k not in varying} == {
            k: v for k, v in full.headers.items() if k not in varying
        }
        assert fast.text == full.text.replace(f"{order_id}-2", order_id)

    new = both(order("F-ORD", **{"F-1": 2}))
    assert new[0].status_code == 201 and new[0].headers["x-correlation-id"] == "cid-1"
    same(*new, "F-ORD")
    repeat = both(order("F-ORD", **{"F-1": 2}))
    assert repeat[0].status_code == 200
    same(*repeat, "F-ORD")
    conflict = both(order("F-ORD", **{"F-1": 3}))
    assert conflict[0].status_code == 409
    assert conflict[0].headers["content-type"] == "application/problem+json"
    same(*conflict, "F-ORD")
    assert availability(base, READ_KEY, "web", "F-1")["reserved"] == 4

    # A body the fast path does not accept is handed, whole, to the framework route: sent in
    # chunks, a bad one is refused naming the field; a good one is allocated.
    def chunked(body: dict[str, Any]) -> httpx.Response:
        raw = json.dumps(body).encode()
        parts = (raw[i : i + 7] for i in range(0, len(raw), 7))
        return httpx.post(
            url, content=parts, headers={**W, "Content-Type": "application/json"}, timeout=10
        )

    bad = chunked(order("F-BAD", **{"F-1": 0}))
    assert bad.status_code == 400 and "quantity" in bad.json()["detail"], bad.text
    good = chunked(order("F-GOOD", **{"F-1": 1}))
    assert good.status_code == 201 and good.json()["order_id"] == "F-GOOD", good.text
    assert availability(base, READ_KEY, "web", "F-1")["reserved"] == 5


def test_safety_stock_override_recomputes_at_once(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    stocked(stack, base, [receipt("S-1", 10, "DC-EAST")], "S-1", 10)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    path = f"{base}/v1/channels/web/safety-stock/S-1"
    assert httpx.put(path, json={"quantity": 4}, headers=W).status_code == 403
    assert httpx.put(path, json={"quantity": 4}, headers=admin).status_code == 200
    doc = availability(base, READ_KEY, "web", "S-1")
    assert (doc["safety_stock"], doc["available_to_sell"]) == (4, 6)
    assert httpx.put(path, json={"quantity": -1}, headers=admin).status_code == 400
    assert httpx.delete(path, headers=admin).status_code == 200
    assert availability(base, READ_KEY, "web", "S-1")["available_to_sell"] == 10


@pytest.mark.redis_kinds
def test_64_concurrent_clients_never_oversell(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api(workers=2)
    stocked(stack, base, [receipt("HOT", 10, "DC-EAST")], "HOT", 10)

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
            tasks = [
                client.post(
                    f"{base}/v1/allocations",
                    json=order(
                        f"RACE-{i}", "web" if i % 2 else "marketplace", **{"HOT": 1 + i % 3}
                    ),
                    headers=W,
                )
                for i in range(64)
            ]
            return await asyncio.gather(*tasks)

    replies = asyncio.run(race())
    assert all(r.status_code == 201 for r in replies), [
        r.text for r in replies if r.status_code != 201
    ][:3]
    taken = {"web": 0, "marketplace": 0}
    for reply in replies:
        line = reply.json()["lines"][0]
        got = sum(a["quantity"] for a in line["allocations"])
        assert got + line["unfilled"] == line["quantity"]
        taken[reply.json()["channel"]] += got
    # marketplace keeps 5 back: it can take at most 5; all channels together at most 10.
    assert taken["marketplace"] <= 5
    assert taken["web"] + taken["marketplace"] == 10
    doc = availability(base, READ_KEY, "web", "HOT")
    assert (doc["reserved"], doc["available_to_sell"]) == (10, 0)

    async def repeat() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*[
                client.post(f"{base}/v1/allocations", json=order(f"RACE-{i}", "web" if i % 2 else "marketplace", **{"HOT": 1 + i % 3}), headers=W)
                for i in range(64)
            ])  # fmt: skip

    again = asyncio.run(repeat())
    assert all(r.status_code == 200 for r in again)
    assert [r.json() for r in again] == [r.json() for r in replies]
    assert availability(base, READ_KEY, "web", "HOT")["reserved"] == 10


def test_a_wave_of_10000_orders_is_answered_in_one_request(stack: Stack) -> None:
    import random

    stack.start_consumer()
    base = stack.start_api()
    skus = [f"W-{i:04d}" for i in range(400)]
    stack.produce(
        [receipt(sku, 30, "DC-EAST") for sku in skus]
        + [receipt(sku, 10, "DC-WEST") for sku in skus[::2]]
    )
    expected = {sku: 30 + (10 if i % 2 == 0 else 0) for i, sku in enumerate(skus)}

    def stocked() -> bool:
        reply = httpx.post(
            f"{base}/v1/availability/web/query",
            json={"skus": skus},
            headers={"Authorization": f"Bearer {READ_KEY}"},
        )
        return {i["sku"]: i["on_hand"] for i in reply.json()["items"]} == expected

    poll(stocked, bool, timeout=60)
    rng = random.Random(3)
    orders = [
        {
            "order_id": f"WAVE-{n}",
            "channel": "web" if n % 3 else "marketplace",
            "backorder": False,
            "lines": [
                {"line_id": str(k), "sku": rng.choice(skus), "quantity": rng.randint(1, 3)}
                for k in range(rng.randint(1, 5))
            ],
        }
        for n in range(10_000)
    ]
    reply = httpx.post(
        f"{base}/v1/allocations/batch", json={"orders": orders}, headers=W, timeout=120
    )
    assert reply.status_code == 200, reply.text[:500]
    results = reply.json()["orders"]
    assert [r["order_id"] for r in results] == [o["order_id"] for o in orders]
    taken: dict[str, int] = {}
    for placed, result in zip(orders, results, strict=True):
        for asked, line in zip(placed["lines"], result["lines"], strict=True):
            got = sum(a["quantity"] for a in line["allocations"])
            assert got + line["backordered"] + line["unfilled"] == asked["quantity"]
            taken[asked["sku"]] = taken.get(asked["sku"], 0) + got
    # No oversell: every sku reserved at most its stock, and what the wave took is reserved.
    reply = httpx.post(
        f"{base}/v1/availability/web/query",
        json={"skus": skus},
        headers={"Authorization": f"Bearer {READ_KEY}"},
    )
    for item in reply.json()["items"]:
        assert item["reserved"] == taken.get(item["sku"], 0) <= item["on_hand"], item
