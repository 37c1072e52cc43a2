"""A consumer's write on a Redis Cluster goes in steps, each sent on its node's connection as
soon as it is made. A slot moved to another node meanwhile (a resharding) is followed: the
steps the old node refused are sent again where the slot is now, in order."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from atp_service.local.services import ClusterService, Service
from atp_service.store import keys
from atp_service.store.redis_store import RedisStore, initialize
from streams.changeset import ChangeSet, SkuWrite

pytestmark = pytest.mark.integration

LAYOUT = keys.Layout(16)
SKUS = [f"SKU-{n}" for n in range(120)]


def move_slot(cluster: ClusterService, slot: int, target: Service) -> None:
    """Move ``slot`` and its keys to ``target``, as `redis-cli --cluster reshard` does."""
    source = cluster.node_for_slot(slot)
    src, dst = redis.Redis(port=source.port), redis.Redis(port=target.port)
    src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    while names := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *names)
    for node in cluster.primaries():
        redis.Redis(port=node.port).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    for client in (src, dst):
        client.close()


@pytest.fixture
def cluster_client(redis_cluster: ClusterService) -> Iterator[redis.RedisCluster]:
    for node in redis_cluster.primaries():
        redis.Redis(port=node.port).flushall()
    client = redis.RedisCluster.from_url(redis_cluster.url)
    initialize(client, LAYOUT, "test")
    yield client
    client.close()


def write(store: RedisStore, tag: str, offset: int) -> list[str]:
    changes = ChangeSet(offsets={"t\x1f0": offset})
    for sku in SKUS:
        changes.skus.append(SkuWrite(sku, None, tag.encode(), None, {}, [f"{tag}-{sku}"]))
    return store.write(changes, 1_000)


def versions(client: redis.RedisCluster) -> dict[str, int]:
    return {sku: int(client.hget(LAYOUT.sku_key(sku), "v") or 0) for sku in SKUS}


def test_a_write_in_steps_follows_a_slot_moved_to_another_node(
    redis_cluster: ClusterService, cluster_client: redis.RedisCluster
) -> None:
    store = RedisStore(cluster_client, "g", 60_000, layout=LAYOUT, cluster=True, step_skus=2)
    assert write(store, "first", 1) == []
    # The shard of SKU-0, written in several steps, moves to another primary.
    key = LAYOUT.sku_key("SKU-0")
    slot = cluster_client.keyslot(key)
    source = redis_cluster.node_for_slot(slot)
    target = next(p for p in redis_cluster.primaries() if p.port != source.port)
    assert sum(LAYOUT.shard(s) == LAYOUT.shard("SKU-0") for s in SKUS) > 3
    move_slot(redis_cluster, slot, target)
    try:
        # The client has not heard of it: its steps go to the old node first.
        assert cluster_client.get_node_from_key(key).port == source.port
        assert write(store, "second", 2) == []
        assert versions(cluster_client) == dict.fromkeys(SKUS, 2)
        assert cluster_client.get_node_from_key(key).port == target.port
        assert redis.Redis(port=target.port).exists(key) == 1
        # Every step landed once: the next write is folded on what this one left.
        assert write(store, "third", 3) == []
        assert versions(cluster_client) == dict.fromkeys(SKUS, 3)
    finally:
        move_slot(redis_cluster, slot, source)
