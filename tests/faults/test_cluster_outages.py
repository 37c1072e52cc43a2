"""A Redis Cluster in trouble (contract section 7): slots that no node serves."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from atp_service.local.services import ClusterService, Service, wait_until
from atp_service.runtime import sync_redis
from tests.conftest import READ_KEY, Stack
from tests.faults.harness import tail
from tests.integration.helpers import availability, poll, receipt

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _on_each(nodes: list[Service], *command: object) -> list[Any]:
    """``command``'s reply from each node."""
    replies = []
    for node in nodes:
        with redis.Redis(port=node.port, decode_responses=True) as client:
            replies.append(client.execute_command(*command))
    return replies


def _states(nodes: list[Service]) -> set[str]:
    return {info["cluster_state"] for info in _on_each(nodes, "CLUSTER INFO")}


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
        for first, last in ranges:
            _on_each(cluster.alive(), "CLUSTER", "DELSLOTSRANGE", first, last)
        wait_until(lambda: _states(cluster.alive()) == {"fail"}, 10, "every node to say fail")
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
