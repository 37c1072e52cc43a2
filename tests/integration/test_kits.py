"""Kits (contract section 10) against real Redis, broker, consumer and API processes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis

from allocation.kits import KitComponent
from atp_service.ops.topic_reader import read_to_end
from atp_service.store.kit_records import AsyncKitRecords, KitRecord, SeqMoved
from tests.conftest import ADMIN_KEY, READ_KEY, TEST_KITS, WRITE_KEY, Stack
from tests.faults.harness import atp_cli, lose_redis_and_rebuild
from tests.integration.helpers import availability, order, poll, receipt, reservation

pytestmark = pytest.mark.integration
A = {"Authorization": f"Bearer {ADMIN_KEY}"}
R = {"Authorization": f"Bearer {READ_KEY}"}
W = {"Authorization": f"Bearer {WRITE_KEY}"}


def put_kit(base: str, sku: str, **components: int) -> httpx.Response:
    body = {"components": [{"sku": s, "quantity": q} for s, q in components.items()]}
    return httpx.put(f"{base}/v1/kits/{sku}", json=body, headers=A, timeout=10)


def value(base: str, channel: str, sku: str) -> int:
    found: int = availability(base, READ_KEY, channel, sku)["available_to_sell"]
    return found


def last_announced(stack: Stack) -> dict[tuple[str, str], int]:
    """(channel, sku) -> the last available_to_sell on the availability topic, read to its
    end."""
    out: dict[tuple[str, str], int] = {}
    topic = stack.settings.topics.availability
    for message in read_to_end(stack.settings.kafka.bootstrap, topic, "test"):
        event = json.loads(message.value() or b"{}")
        out[event["channel"], event["sku"]] = event["available_to_sell"]
    return out


# On the cluster (16 shards) the kits' components are in other shards than the kits, as kits
# and components usually are.
@pytest.mark.redis_kinds("single", "cluster")
def test_a_kit_reads_as_its_scarcest_component_and_follows_every_change(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    assert put_kit(base, "KIT-1", **{"KA-1": 2, "KB-1": 1}).status_code == 200
    stack.produce([receipt("KA-1", 11, "DC-EAST"), receipt("KB-1", 4, "DC-WEST")])
    # web sells from both locations: min(11 // 2, 4 // 1); marketplace from DC-EAST only,
    # where KB-1 has nothing.
    poll(lambda: value(base, "web", "KIT-1"), lambda v: v == 4)
    kit = availability(base, READ_KEY, "web", "KIT-1")
    assert (kit["on_hand"], kit["reserved"], kit["safety_stock"]) == (4, 0, 0)
    assert value(base, "marketplace", "KIT-1") == 0

    # A reservation of a component moves the kit; so does a receipt.
    stack.produce([reservation("KB-1", 3, "R-KB", location="DC-WEST")])
    poll(lambda: value(base, "web", "KIT-1"), lambda v: v == 1)
    stack.produce([receipt("KB-1", 10, "DC-WEST")])
    poll(lambda: value(base, "web", "KIT-1"), lambda v: v == 5)

    # Read like any sku: the bulk query and the changes feed hold it.
    bulk = httpx.post(
        f"{base}/v1/availability/web/query", json={"skus": ["KIT-1", "KA-1"]}, headers=R
    ).json()
    assert [d["available_to_sell"] for d in bulk["items"]] == [5, 11]
    changes = httpx.get(f"{base}/v1/availability/web/changes", headers=R).json()
    assert "KIT-1" in {c["sku"] for c in changes["items"]}

    # Stock events for the kit's own sku count for nothing.
    stack.produce([receipt("KIT-1", 100, "DC-EAST", event_id="m-kit-itself")])
    explain = f"{base}/v1/availability/web/KIT-1/explain"
    poll(
        lambda: httpx.get(explain, headers=R).json()["explain"]["recent_events"],
        lambda events: "m-kit-itself" in {e["event_id"] for e in events},
    )
    assert value(base, "web", "KIT-1") == 5
    stack.produce([receipt("KA-1", 1, "DC-EAST")])  # 12 // 2
    poll(lambda: value(base, "web", "KIT-1"), lambda v: v == 6)

    # Announced like any sku, and the last message per key is the current value.
    poll(lambda: last_announced(stack), lambda d: d.get(("web", "KIT-1")) == 6)

    why = httpx.get(explain, headers=R).json()["explain"]
    assert why["components"] == [
        {"sku": "KA-1", "quantity": 2, "available_to_sell": 12, "on_hand": 12, "kits": 6},
        {"sku": "KB-1", "quantity": 1, "available_to_sell": 11, "on_hand": 14, "kits": 11},
    ]


@pytest.mark.redis_kinds("single", "cluster")
@pytest.mark.config(TEST_KITS)
def test_kit_definitions_are_checked_read_and_deleted(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    assert put_kit(base, "KIT-2", **{"KA-2": 1, "KB-2": 3}).status_code == 200
    got = httpx.get(f"{base}/v1/kits/KIT-2", headers=R)
    assert got.json() == {
        "sku": "KIT-2",
        "components": [{"sku": "KA-2", "quantity": 1}, {"sku": "KB-2", "quantity": 3}],
    }
    # The config file's kit is there too, installed by the consumer.
    poll(lambda: httpx.get(f"{base}/v1/kits/KIT-CFG", headers=R).status_code, lambda s: s == 200)

    refused = [
        put_kit(base, "KIT-3", **{"KIT-2": 1}),  # a component that is a kit
        put_kit(base, "KA-2", **{"X": 1}),  # a component of another kit
        put_kit(base, "KIT-3", **{f"P-{i}": 1 for i in range(51)}),
        put_kit(base, "KIT-3", **{"KA-2": 0}),
        put_kit(base, "KIT-3", **{"KA-2": 1001}),
        put_kit(base, "KIT-3"),  # no component
        httpx.put(
            f"{base}/v1/kits/KIT-3",
            json={"components": [{"sku": "KA-2", "quantity": 1}, {"sku": "KA-2", "quantity": 2}]},
            headers=A,
        ),
    ]
    for reply in refused:
        assert reply.status_code == 400, reply.text
        assert reply.headers["content-type"].startswith("application/problem+json")

    writer = httpx.put(
        f"{base}/v1/kits/KIT-4", json={"components": [{"sku": "KA-2", "quantity": 1}]}, headers=W
    )
    assert writer.status_code == 403
    stack.produce([receipt("KA-2", 9), receipt("KB-2", 9)])
    poll(lambda: value(base, "web", "KIT-2"), lambda v: v == 3)
    deleted = httpx.delete(f"{base}/v1/kits/KIT-2", headers=A)
    assert deleted.status_code == 200
    assert httpx.get(f"{base}/v1/kits/KIT-2", headers=R).status_code == 404
    assert httpx.delete(f"{base}/v1/kits/KIT-2", headers=A).status_code == 404
    # No longer a kit: the sku has no stock of its own.
    poll(lambda: value(base, "web", "KIT-2"), lambda v: v == 0)


@pytest.mark.redis_kinds("single", "cluster")
def test_a_kit_line_reserves_whole_kits_and_never_part_of_one(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    assert put_kit(base, "KIT-5", **{"KA-5": 2, "KB-5": 3}).status_code == 200
    stack.produce([receipt("KA-5", 40), receipt("KB-5", 30)])  # 10 kits (KB-5 is short)
    poll(lambda: value(base, "web", "KIT-5"), lambda v: v == 10)

    reply = httpx.post(
        f"{base}/v1/allocations", json=order("K-1", "web", **{"KIT-5": 4}), headers=W
    )
    assert reply.status_code == 201, reply.text
    line = reply.json()["lines"][0]
    assert (line["sku"], line["quantity"], line["unfilled"], line["allocations"]) == (
        "KIT-5",
        4,
        0,
        [],
    )
    taken = {c["sku"]: sum(a["quantity"] for a in c["allocations"]) for c in line["components"]}
    assert taken == {"KA-5": 8, "KB-5": 12}
    poll(lambda: value(base, "web", "KIT-5"), lambda v: v == 6)

    # Many orders at once, kits and components alike: whole kits only, nothing oversold.
    def place(i: int) -> dict[str, Any]:
        lines = {"KIT-5": 2} if i % 3 else {"KB-5": 2}
        body = order(f"K-many-{i}", "web", **lines)
        answer = httpx.post(f"{base}/v1/allocations", json=body, headers=W, timeout=20)
        assert answer.status_code == 201, answer.text
        result: dict[str, Any] = answer.json()
        return result

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(place, range(24)))
    units = {"KA-5": 8, "KB-5": 12}
    for result in results:
        line = result["lines"][0]
        if line["sku"] == "KIT-5":
            kits = line["quantity"] - line["unfilled"]
            for part in line["components"]:
                got = sum(a["quantity"] for a in part["allocations"])
                assert got == kits * {"KA-5": 2, "KB-5": 3}[part["sku"]]
                units[part["sku"]] += got
        else:
            units["KB-5"] += sum(a["quantity"] for a in line["allocations"])
    assert units["KA-5"] <= 40 and units["KB-5"] <= 30
    assert 30 - units["KB-5"] < 3 or 40 - units["KA-5"] < 2  # what is left makes no kit

    # DELETE releases every component's reservation.
    assert httpx.delete(f"{base}/v1/allocations/K-1", headers=W).status_code == 200
    poll(lambda: value(base, "web", "KA-5"), lambda v: v == 40 - units["KA-5"] + 8)


@pytest.mark.redis_kinds("single", "cluster")
def test_kits_set_over_http_survive_a_loss_of_redis_data(stack: Stack) -> None:
    consumer = stack.start_consumer()
    base = stack.start_api()
    assert put_kit(base, "KIT-6", **{"KA-6": 1}).status_code == 200
    assert put_kit(base, "KIT-6", **{"KA-6": 2, "KB-6": 1}).status_code == 200
    assert put_kit(base, "KIT-7", **{"KA-6": 1}).status_code == 200
    assert httpx.delete(f"{base}/v1/kits/KIT-7", headers=A).status_code == 200
    stack.produce([receipt("KA-6", 8), receipt("KB-6", 3)])
    poll(lambda: value(base, "web", "KIT-6"), lambda v: v == 3)
    lose_redis_and_rebuild(stack, consumer)
    assert httpx.get(f"{base}/v1/kits/KIT-6", headers=R).json()["components"] == [
        {"sku": "KA-6", "quantity": 2},
        {"sku": "KB-6", "quantity": 1},
    ]
    assert httpx.get(f"{base}/v1/kits/KIT-7", headers=R).status_code == 404
    # The rebuild computed the kits from the rebuilt components: whole before any consumer.
    assert value(base, "web", "KIT-6") == 3
    verified = atp_cli(stack, "verify")
    assert verified.returncode == 0, verified.stdout
    stack.start_consumer()
    stack.produce([receipt("KB-6", 1)])
    poll(lambda: value(base, "web", "KIT-6"), lambda v: v == 4)


async def test_a_kit_checked_against_stale_definitions_is_refused(redis_url: str) -> None:
    """Two admins at once: K1 over A, and A made a kit. Whichever lands second was checked
    against definitions that no longer hold, and must be checked again."""
    records = AsyncKitRecords(aredis.Redis.from_url(redis_url))
    _, version = await records.all()
    await records.put("A", KitRecord("A", (KitComponent("X", 1),), "api", 1), 0, 0, version)
    with pytest.raises(SeqMoved):
        await records.put("K1", KitRecord("K1", (KitComponent("A", 1),), "api", 1), 0, 0, version)
    found, now_version = await records.all()
    assert set(found) == {"A"} and now_version == version + 1
