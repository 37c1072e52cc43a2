"""Backorders follow supply (contract section 9), against real Redis, broker and processes."""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
import pytest

from tests.conftest import READ_KEY, WRITE_KEY, Stack
from tests.faults.harness import atp_cli
from tests.integration.helpers import (
    allocate,
    availability,
    day,
    inbound,
    order,
    plan_of,
    poll,
    read_topic,
    receipt,
)

pytestmark = pytest.mark.integration
W = {"Authorization": f"Bearer {WRITE_KEY}"}


def updates(stack: Stack, expected: int) -> list[dict[str, Any]]:
    found = read_topic(stack, stack.settings.topics.allocation_updates, expected, timeout=15)
    return [json.loads(m.value()) for m in found]  # type: ignore[attr-defined]


def test_a_receipt_confirms_backorders_in_priority_then_age_order(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    # Nothing on hand; 20 due today at DC-EAST (within both channels' horizons).
    stack.produce([inbound("B-1", "PO-1", 20, day(0), "DC-EAST")])
    poll(lambda: availability(base, READ_KEY, "web", "B-1"), lambda d: d["atp"] != [])
    first_web = allocate(base, order("W-1", "web", True, **{"B-1": 4}))
    market = allocate(base, order("M-1", "marketplace", True, **{"B-1": 3}))
    later_web = allocate(base, order("W-2", "web", True, **{"B-1": 5}))
    for result, quantity in ((first_web, 4), (market, 3), (later_web, 5)):
        (line,) = result["lines"]
        assert (line["backordered"], line["promise_date"], line["allocations"]) == (
            quantity, day(0), []
        )  # fmt: skip

    # 10 arrive: web comes first (priority 1), so W-1 (4) and W-2 (5) are confirmed from
    # stock although the marketplace order is older; M-1 keeps its place and its promise.
    stack.produce([receipt("B-1", 10, "DC-EAST")])
    confirmed = poll(lambda: plan_of(base, "W-2"), lambda r: r["lines"][0]["backordered"] == 0)
    # A conversion's reservation id carries the re-plan's time: never one used before.
    (line,) = confirmed["lines"]
    (w2,) = line["allocations"]
    assert (w2["location"], w2["quantity"]) == ("DC-EAST", 5)
    assert w2["reservation_id"].startswith("W-2:1:DC-EAST#")
    assert (line["promise_date"], line["unfilled"]) == (None, 0)
    (line,) = plan_of(base, "W-1")["lines"]
    (w1,) = line["allocations"]
    assert (w1["location"], w1["quantity"], line["backordered"]) == ("DC-EAST", 4, 0)
    (line,) = plan_of(base, "M-1")["lines"]
    assert (line["allocations"], line["backordered"], line["promise_date"]) == ([], 3, day(0))
    # Stock 10 less 9 allocated less the marketplace's claim of 3: nothing left to sell.
    doc = availability(base, READ_KEY, "web", "B-1")
    assert (doc["on_hand"], doc["reserved"], doc["available_to_sell"]) == (10, 12, 0)

    # One update per changed order, with its current result; none for M-1.
    messages = updates(stack, expected=2)
    assert sorted((m["order_id"], m["reason"]) for m in messages) == [
        ("W-1", "confirmed"), ("W-2", "confirmed")
    ]  # fmt: skip
    for message in messages:
        assert message["lines"] == plan_of(base, message["order_id"])["lines"]
        assert message["status"] == "allocated" and message["as_of"].endswith("Z")
    # The reservations behind it, as contract events on the reservations topic.
    events = [
        json.loads(m.value())  # type: ignore[attr-defined]
        for m in read_topic(stack, stack.settings.topics.reservations, expected=7)
    ]
    replanned = {(e["type"], e["reservation_id"]) for e in events}
    assert {
        ("reservation_released", "W-1:1:DC-EAST:backorder"),
        ("reservation_created", w1["reservation_id"]),
        ("reservation_released", "W-2:1:DC-EAST:backorder"),
        ("reservation_created", w2["reservation_id"]),
    } <= replanned


def test_promises_follow_a_slipping_purchase_order_and_releases(stack: Stack) -> None:
    consumer = stack.start_consumer()
    base = stack.start_api()
    stack.produce(
        [
            inbound("P-1", "PO-1", 5, day(3), "DC-WEST"),
            inbound("P-1", "PO-2", 10, day(8), "DC-WEST"),
            receipt("R-1", 3, "DC-EAST"),
            inbound("R-1", "PO-3", 10, day(5), "DC-WEST"),
        ]
    )
    poll(lambda: availability(base, READ_KEY, "web", "P-1"), lambda d: len(d["atp"]) == 2)
    poll(lambda: availability(base, READ_KEY, "web", "R-1"), lambda d: d["on_hand"] == 3)
    early = allocate(base, order("S-1", "web", True, **{"P-1": 4}))
    late = allocate(base, order("S-2", "web", True, **{"P-1": 4}))
    assert early["lines"][0]["promise_date"] == day(3)
    assert late["lines"][0]["promise_date"] == day(8)

    # PO-1 slips past PO-2: S-1 is promised PO-2's date; S-2 keeps its own.
    stack.produce([inbound("P-1", "PO-1", 5, day(10), "DC-WEST")])
    poll(lambda: plan_of(base, "S-1"), lambda r: r["lines"][0]["promise_date"] == day(8))
    assert plan_of(base, "S-2")["lines"][0]["promise_date"] == day(8)
    # PO-2 is cancelled: only PO-1 (5, day 10) is left. S-1 (first) is covered by it, S-2
    # no longer is: it stays backordered, with no date, ahead of later orders.
    stack.produce([inbound("P-1", "PO-2", 0, day(8), "DC-WEST")])
    poll(lambda: plan_of(base, "S-2"), lambda r: r["lines"][0]["promise_date"] is None)
    (line,) = plan_of(base, "S-1")["lines"]
    assert (line["promise_date"], line["backordered"]) == (day(10), 4)
    assert plan_of(base, "S-2")["lines"][0]["backordered"] == 4
    # A released order is never planned again; what it released goes to the next in line.
    released = httpx.delete(f"{base}/v1/allocations/S-1", headers=W, timeout=10)
    assert released.status_code == 200
    poll(lambda: plan_of(base, "S-2"), lambda r: r["lines"][0]["promise_date"] == day(10))
    stack.produce([receipt("P-1", 20, "DC-WEST")])
    poll(lambda: plan_of(base, "S-2"), lambda r: r["lines"][0]["backordered"] == 0)
    gone = plan_of(base, "S-1")
    assert gone["status"] == "released" and gone["lines"][0]["allocations"] == []
    assert availability(base, READ_KEY, "web", "P-1")["reserved"] == 4

    # A release over the API frees stock: the backorder behind it is confirmed at once.
    taken = allocate(base, order("T-1", "web", **{"R-1": 3}))
    assert taken["lines"][0]["allocations"][0]["quantity"] == 3
    waiting = allocate(base, order("T-2", "web", True, **{"R-1": 2}))
    assert waiting["lines"][0]["backordered"] == 2
    assert httpx.delete(f"{base}/v1/allocations/T-1", headers=W, timeout=10).status_code == 200
    (line,) = plan_of(base, "T-2")["lines"]  # re-planned in the release's own write
    assert (line["backordered"], line["allocations"][0]["location"]) == (0, "DC-EAST")
    messages = updates(stack, expected=5)
    reasons = {(m["order_id"], m["reason"]) for m in messages}
    assert {("S-1", "promise_changed"), ("S-2", "promise_changed"), ("S-2", "confirmed"),
            ("T-2", "confirmed")} <= reasons  # fmt: skip
    assert not any(m["order_id"] == "S-1" and m["status"] == "released" for m in messages)

    # `atp rebuild` from the ledger gives the same projection and the same plans: the
    # re-plans' reservations reached the ledger through the reservations topic.
    poll(lambda: atp_cli(stack, "verify").returncode == 0, bool, timeout=30, pause=0.5)
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(20) == 0
    reads = {sku: availability(base, READ_KEY, "web", sku) for sku in ("P-1", "R-1")}
    plans = {o: plan_of(base, o) for o in ("S-1", "S-2", "T-1", "T-2")}
    rebuilt = atp_cli(stack, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    for sku, doc in reads.items():
        again = availability(base, READ_KEY, "web", sku)
        assert {k: v for k, v in again.items() if k != "as_of"} == {
            k: v for k, v in doc.items() if k != "as_of"
        }
    assert {o: plan_of(base, o) for o in plans} == plans
