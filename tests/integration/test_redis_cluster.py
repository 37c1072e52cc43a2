"""What is particular to a Redis Cluster (contract section 7): the setting must match the
server, and a node that lost its shards is never read as zeros."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import redis

from atp_service.local.services import ClusterService
from tests.conftest import ALL_KEY, READ_KEY, Stack
from tests.integration.helpers import availability, poll, receipt

pytestmark = pytest.mark.integration

BEARER = {"Authorization": f"Bearer {ALL_KEY}"}


def _run(stack: Stack, command: str, cluster: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atp_service.cli", command],
        env={**stack.env, "ATP_REDIS_CLUSTER": cluster},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.redis_kinds("single")
def test_cluster_true_against_a_single_redis_stops_start_up_saying_so(stack: Stack) -> None:
    done = _run(stack, "consume", "1")
    assert done.returncode == 2, done.stderr
    assert "is not a Redis Cluster node" in done.stderr


@pytest.mark.redis_kinds("cluster")
def test_cluster_false_against_a_cluster_node_stops_start_up_saying_so(stack: Stack) -> None:
    for command in ("consume", "verify"):
        done = _run(stack, command, "0")
        assert done.returncode == 2, (command, done.stderr)
        assert "is a Redis Cluster node but `redis.cluster` is false" in done.stderr


@pytest.mark.redis_kinds("cluster")
def test_a_node_that_lost_its_shards_answers_503_never_zeros(
    stack: Stack, redis_cluster: ClusterService
) -> None:
    stack.start_consumer()  # joins its group while the API starts
    skus = [f"LOST-{i}" for i in range(40)]
    stack.produce([receipt(sku, 7) for sku in skus])
    base = stack.start_api()
    for sku in skus:
        poll(lambda sku=sku: availability(base, READ_KEY, "web", sku), lambda d: d["on_hand"] == 7)
    # One primary emptied, as a node replaced by an empty one would be.
    emptied = redis_cluster.primaries()[0]
    redis.Redis(port=emptied.port).flushall()
    layout, client = stack.layout, stack.redis()
    lost = [s for s in skus if client.get_node_from_key(layout.sku_key(s)).port == emptied.port]  # type: ignore[attr-defined]
    kept = [s for s in skus if s not in lost]
    assert lost and kept  # 40 skus over 16 shards reach every node
    answers = poll(
        lambda: [
            httpx.get(f"{base}/v1/availability/web/{s}", headers=BEARER).status_code for s in lost
        ],
        lambda codes: set(codes) == {503},
    )
    assert answers
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 503
    assert ready.headers["content-type"].startswith("application/problem+json")
    # The other nodes' skus still read their values.
    assert availability(base, READ_KEY, "web", kept[0])["on_hand"] == 7


@pytest.mark.redis_kinds("cluster")
@pytest.mark.redis_options(shards=1)
def test_one_shard_on_a_cluster_allocates_and_releases(stack: Stack) -> None:
    """Every key of the one shard is in one slot, but an order's record is in none: the API
    writes orders in steps, as with several shards, not in the lines' script (CROSSSLOT)."""
    assert stack.layout.shards == 1
    stack.start_consumer()  # joins its group while the API starts
    stack.produce([receipt("ONE-1", 5), receipt("ONE-2", 5)])
    base = stack.start_api()
    for sku in ("ONE-1", "ONE-2"):
        poll(lambda sku=sku: availability(base, READ_KEY, "web", sku), lambda d: d["on_hand"] == 5)
    order = {
        "order_id": "ONE-ORDER",
        "channel": "web",
        "lines": [
            {"line_id": "1", "sku": "ONE-1", "quantity": 2},
            {"line_id": "2", "sku": "ONE-2", "quantity": 3},
        ],
    }
    made = httpx.post(f"{base}/v1/allocations", json=order, headers=BEARER, timeout=30)
    assert made.status_code == 201, made.text
    assert availability(base, READ_KEY, "web", "ONE-1")["reserved"] == 2
    assert availability(base, READ_KEY, "web", "ONE-2")["reserved"] == 3
    again = httpx.post(f"{base}/v1/allocations", json=order, headers=BEARER, timeout=30)
    assert (again.status_code, again.json()) == (200, made.json())
    released = httpx.delete(f"{base}/v1/allocations/ONE-ORDER", headers=BEARER, timeout=30)
    assert released.status_code == 200 and released.json()["status"] == "released"
    assert availability(base, READ_KEY, "web", "ONE-2")["reserved"] == 0
