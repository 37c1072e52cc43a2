"""A Redis Cluster in trouble (contract section 7): slots that no node serves, and a primary
failing over while allocations race through the API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from atp_service.local.services import ClusterService, Service, wait_until
from atp_service.runtime import sync_redis
from tests.conftest import READ_KEY, WRITE_KEY, Stack
from tests.faults.harness import atp_cli, documents, redis_for, stored_offsets, tail
from tests.integration.helpers import availability, poll, receipt

pytestmark = [pytest.mark.faults, pytest.mark.integration]
W = {"Authorization": f"Bearer {WRITE_KEY}"}


def _on_each(nodes: list[Service], *command: object) -> list[Any]:
    """``command``'s reply from each node."""
    replies = []
    for node in nodes:
        with redis.Redis(port=node.port, decode_responses=True) as client:
            replies.append(client.execute_command(*command))
    return replies


def _states(nodes: list[Service]) -> set[str]:
    return {info["cluster_state"] for info in _on_each(nodes, "CLUSTER INFO")}


def _take(ranges: list[tuple[int, int]], victim: Service, cluster: ClusterService) -> bool:
    """Unbind `ranges` on every node, the victim first; true once every node says fail.

    A node binds an unassigned slot to any primary whose gossip still claims it, so a ping the
    victim sent before its own DELSLOTS can give a node the slots back: unbind until none has.
    """
    for node in [victim, *(n for n in cluster.alive() if n is not victim)]:
        for first, last in ranges:
            with contextlib.suppress(redis.ResponseError):  # already unassigned there
                _on_each([node], "CLUSTER", "DELSLOTSRANGE", first, last)
    return _states(cluster.alive()) == {"fail"}


def test_slots_no_node_serves_make_readyz_503_and_the_consumer_wait(
    redis_cluster: ClusterService,
    make_stack: Callable[..., Stack],
    caplog: pytest.LogCaptureFixture,
) -> None:
    stack = make_stack(redis_kind="cluster")
    consumer = stack.start_consumer()  # joins its group while the API starts
    skus = [f"OK-{i}" for i in range(24)]  # over all 16 shards' nodes
    stack.produce([receipt(sku, 5) for sku in skus])
    base = stack.start_api()
    for sku in skus:
        poll(lambda sku=sku: availability(base, READ_KEY, "web", sku), lambda d: d["on_hand"] == 5)
    assert httpx.get(f"{base}/readyz").status_code == 200

    # One primary's slots taken from every node's view (the session's cluster: given back
    # below): no node serves them, every node says cluster_state fail and refuses commands
    # (CLUSTERDOWN), and the keys stay where they are.
    cluster = redis_cluster
    victim = next(p for p in cluster.primaries() if f":{p.port}/" not in cluster.url)
    ranges = cluster.slots_of(victim)
    try:
        wait_until(lambda: _take(ranges, victim, cluster), 10, "every node to say fail")
        time.sleep(0.5)  # a ping still in flight rebinds them once more: take them again
        wait_until(lambda: _take(ranges, victim, cluster), 10, "every node to say fail")
        stack.produce([receipt(sku, 1) for sku in skus])

        # Readiness answers within the probe's timeout, saying what is wrong.
        started = time.monotonic()
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert time.monotonic() - started < 1.0
        assert ready.status_code == 503
        assert "the Redis Cluster is not ok" in ready.json()["detail"], ready.text
        assert "cluster_state fail" in ready.json()["detail"], ready.text

        # An API started now has never learnt the slot map: 503, never 500.
        late = stack.start_api()
        assert httpx.get(f"{late}/readyz", timeout=10).status_code == 503
        read = httpx.get(
            f"{late}/v1/availability/web/{skus[0]}",
            headers={"Authorization": f"Bearer {READ_KEY}"},
            timeout=30,
        )
        assert read.status_code == 503, read.text

        # A consumer starting now waits, saying why (in-process: the start-up's client).
        caplog.set_level(logging.WARNING, "atp_service.runtime")
        made: list[redis.Redis] = []
        starting = threading.Thread(
            target=lambda: made.append(sync_redis(stack.settings, 0.1)), daemon=True
        )
        starting.start()
        wait_until(lambda: "the Redis Cluster is not ok" in caplog.text, 10, "the start-up's log")
        assert "cluster_state fail" in caplog.text and starting.is_alive()

        # The running consumer waits: it logs and retries, and does not exit.
        wait_until(lambda: "redis unavailable" in stack.logs(), 30, "the consumer's wait")
        assert consumer.poll() is None, tail(stack.logs())
    finally:
        for first, last in ranges:
            with contextlib.suppress(redis.ResponseError):  # not taken from it after all
                _on_each([victim], "CLUSTER", "ADDSLOTSRANGE", first, last)
        wait_until(cluster.healthy, 20, "the cluster to be ok again")

    # Ok again: everything goes on, with exact values.
    starting.join(10)
    assert made and not starting.is_alive()
    made[0].close()
    for sku in skus:
        poll(lambda sku=sku: availability(late, READ_KEY, "web", sku), lambda d: d["on_hand"] == 6)
    assert consumer.poll() is None, tail(stack.logs())
    for api in (base, late):
        poll(lambda api=api: httpx.get(f"{api}/readyz").status_code, lambda code: code == 200)


SKUS = [f"FO-{i}" for i in range(8)]
STOCK = 40  # each sku's, at DC-EAST: gone within about 55 orders
KILL_AFTER = 15  # orders acknowledged before the primary is killed
CLIENTS = 6


def _orders() -> Iterator[dict[str, Any]]:
    rng = random.Random(17)
    for n in range(400):
        yield {
            "order_id": f"FO-ORDER-{n}",
            "channel": "web",
            "lines": [
                {"line_id": str(k), "sku": sku, "quantity": rng.randint(1, 3)}
                for k, sku in enumerate(rng.sample(SKUS, 3))
            ],
        }


def test_a_primary_failing_over_under_racing_allocations_oversells_nothing(
    make_stack: Callable[..., Stack], redis_cluster: ClusterService
) -> None:
    """Allocations race through the API while a primary is killed and its replica takes
    over. Every order the API acknowledged is still there, no location is reserved beyond
    what it had, and `atp verify` names every sku whose reservations differ from the
    acknowledged orders' (an order answered 503 mid-failover may hold what it made until
    its client repeats it)."""
    stack = make_stack(redis_kind="cluster")
    client = redis_for(stack)
    settings = stack.settings
    consumer = stack.start_consumer()  # joins its group while the API starts
    stack.produce([receipt(sku, STOCK) for sku in SKUS])
    base = stack.start_api()
    for sku in SKUS:
        poll(
            lambda sku=sku: availability(base, READ_KEY, "web", sku),
            lambda d: d["on_hand"] == STOCK,
        )
    victim = next(p for p in redis_cluster.primaries() if f":{p.port}/" not in settings.redis.url)
    # (order, status, body, whether sent after the replica took over)
    answers: list[tuple[dict[str, Any], int, dict[str, Any], bool]] = []

    async def race() -> None:
        orders = _orders()
        acknowledged = asyncio.Event()
        failed_over = asyncio.Event()
        sold_out = asyncio.Event()

        async def one_client(http: httpx.AsyncClient) -> None:
            for order in orders:  # shared: each order is sent once, by one client
                if sold_out.is_set():
                    return
                after = failed_over.is_set()
                reply = await http.post(f"{base}/v1/allocations", json=order, headers=W)
                body = reply.json()
                answers.append((order, reply.status_code, body, after))
                if sum(a[1] == 201 for a in answers) >= KILL_AFTER:
                    acknowledged.set()
                gone = reply.status_code == 201 and all(not x["allocations"] for x in body["lines"])
                if after and gone:
                    sold_out.set()  # after the failover, every sku asked was gone

        async def fail_over() -> None:
            await acknowledged.wait()
            await asyncio.to_thread(redis_cluster.fail_over_by_kill, victim)
            failed_over.set()

        async with httpx.AsyncClient(timeout=60) as http:
            await asyncio.gather(fail_over(), *(one_client(http) for _ in range(CLIENTS)))

    try:
        asyncio.run(race())
        statuses = Counter(status for _, status, _, _ in answers)
        assert set(statuses) <= {201, 503}, statuses
        acked = [(order, body) for order, status, body, _ in answers if status == 201]
        assert any(status == 201 for _, status, _, after in answers if after), statuses

        # Every acknowledged order is still there, as it was answered.
        for order, body in acked:
            got = httpx.get(f"{base}/v1/allocations/{order['order_id']}", headers=W, timeout=30)
            assert (got.status_code, got.json()) == (200, body), order["order_id"]

        # Nothing oversold: not by the acknowledged orders, not in Redis (nothing was
        # released, so what is reserved now is the most ever reserved).
        taken: Counter[tuple[str, str]] = Counter()
        for _, body in acked:
            for line in body["lines"]:
                for a in line["allocations"]:
                    taken[line["sku"], a["location"]] += a["quantity"]
        assert set(taken) <= {(sku, "DC-EAST") for sku in SKUS}
        assert max(taken.values()) <= STOCK, taken
        pairs = [("web", sku) for sku in SKUS]
        reserved = {sku: doc["reserved"] for (_, sku), doc in documents(client, pairs, stack.layout).items() if doc}  # fmt: skip
        assert all(taken[sku, "DC-EAST"] <= reserved[sku] <= STOCK for sku in SKUS), (
            reserved,
            taken,
        )
        poll(lambda: httpx.get(f"{base}/readyz").status_code, lambda code: code == 200)

        # The consumer folds every reservation the API published, then `atp verify` names
        # each sku holding more than the acknowledged orders (a 503'd order's leftovers).
        # One message per reservation made; the reservations topic has no other producer.
        published = sum(len(line["allocations"]) for _, body in acked for line in body["lines"])
        topic = settings.topics.reservations
        poll(
            lambda: sum(n for (t, _), n in stored_offsets(client, settings).items() if t == topic),
            lambda consumed: consumed >= published,
        )
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(30) == 0, tail(stack.logs())
        held = {sku for sku in SKUS if reserved[sku] != taken[sku, "DC-EAST"]}
        verify = atp_cli(stack, "verify")
        if not held:
            assert verify.returncode == 0, verify.stdout + verify.stderr
        else:
            assert verify.returncode == 1, verify.stdout + verify.stderr
            assert all(sku in verify.stdout for sku in held), (held, verify.stdout)
    finally:
        if not victim.alive:
            redis_cluster.rejoin(victim)
