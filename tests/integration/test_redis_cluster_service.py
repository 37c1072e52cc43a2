"""The local Redis Cluster the cluster tests and benchmarks run on: started, failed over,
stopped."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from atp_service.local.services import CLUSTER_SLOTS, ClusterService, start_redis_cluster

pytestmark = pytest.mark.integration


def key_on(cluster: ClusterService, client: RedisCluster, primary_port: int) -> str:
    """A new key whose slot the primary on `primary_port` serves."""
    while True:
        key = f"t:{uuid.uuid4().hex}"
        if cluster.node_for_slot(client.keyslot(key)).port == primary_port:
            return key


def test_three_primaries_with_a_replica_each_cover_every_slot(
    redis_cluster: ClusterService,
) -> None:
    primaries = redis_cluster.primaries()
    assert len(primaries) == 3
    assert len(redis_cluster.replicas()) == 3
    assert all(len(redis_cluster.replicas_of(p)) == 1 for p in primaries)
    served = [redis_cluster.node_for_slot(slot) for slot in range(0, CLUSTER_SLOTS, 97)]
    assert {node.port for node in served} == {p.port for p in primaries}
    assert redis_cluster.node_for_slot(CLUSTER_SLOTS - 1) in primaries
    with pytest.raises(LookupError):
        redis_cluster.node_for_slot(CLUSTER_SLOTS)


def test_keys_in_different_slots_land_on_different_primaries(
    redis_cluster: ClusterService,
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        for primary in redis_cluster.primaries():
            key = key_on(redis_cluster, client, primary.port)
            client.set(key, primary.port)
            # KEYS answers from the node's own data (a GET elsewhere would be redirected).
            holders = [
                p.port for p in redis_cluster.primaries() if redis.Redis(port=p.port).keys(key)
            ]
            assert holders == [primary.port]
            client.delete(key)
    finally:
        client.close()


def test_a_killed_primary_is_replaced_by_its_replica_and_its_slots_take_writes(
    redis_cluster: ClusterService,
) -> None:
    primary = redis_cluster.primaries()[1]  # not the one redis_cluster.url names
    (replica,) = redis_cluster.replicas_of(primary)
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        key = key_on(redis_cluster, client, primary.port)
        client.set(key, "before")
        assert redis.Redis(port=primary.port).wait(1, 5000) == 1  # on the replica too

        promoted = redis_cluster.fail_over_by_kill(primary)
        try:
            assert promoted.port == replica.port
            assert redis_cluster.node_for_slot(client.keyslot(key)).port == replica.port
            assert len(redis_cluster.primaries()) == 3
            # The client that wrote before finds the new primary by itself.
            assert client.get(key) == b"before"
            client.set(key, "after")
            assert redis.Redis(port=replica.port).get(key) == b"after"
            client.delete(key)
        finally:
            # Others share this cluster: the old primary comes back, as the new one's replica.
            back = redis_cluster.rejoin(primary)
        assert [r.port for r in redis_cluster.replicas_of(promoted)] == [back.port]
        assert len(redis_cluster.replicas()) == 3
    finally:
        client.close()


def test_stop_leaves_no_node_running(tmp_path: Path) -> None:
    cluster = start_redis_cluster(tmp_path, primaries=3, replicas_per_primary=0)
    nodes = list(cluster.nodes)
    assert len(cluster.primaries()) == 3
    assert cluster.replicas() == []
    cluster.stop()
    assert not any(node.alive for node in nodes)
    for node in nodes:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", node.port), timeout=1).close()
