"""Is a Redis Cluster ok? Each node's own view (``CLUSTER INFO``), asked of the node itself.

A cluster whose slots are not all served (a primary gone with no replica to take over, a
slot deleted from its node) refuses commands with CLUSTERDOWN, and redis-py's cluster
client retries those for seconds before giving up. Asking the nodes directly tells at once,
and says what is wrong: readiness (/readyz) answers from it within its probe's timeout, and
a process that starts meanwhile says why it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aredis

from atp_service.store.keys import SLOTS


def not_ok(node: str, info: Mapping[str, Any]) -> str | None:
    """What one node's CLUSTER INFO says is wrong, or None when it says ok."""
    state = info.get("cluster_state")
    if state == "ok":
        return None
    served = info.get("cluster_slots_ok")
    return f"{node} says cluster_state {state}, {served} of {SLOTS} slots served"


async def trouble(client: aredis.RedisCluster) -> str | None:
    """What is wrong with the cluster as its primaries see it, or None when every primary
    the client knows of answers ok. A node is asked once, with no retry."""
    try:
        await client.initialize()  # the first use learns the slot map
    except redis.RedisClusterException as exc:  # e.g. no node serves every slot
        return str(exc)
    nodes = client.get_primaries()
    replies = await asyncio.gather(
        *(client.execute_command("CLUSTER INFO", target_nodes=[node]) for node in nodes),
        return_exceptions=True,
    )
    found = []
    for node, reply in zip(nodes, replies, strict=True):
        if isinstance(reply, BaseException):
            if not isinstance(reply, (redis.RedisError, OSError)):
                raise reply
            found.append(f"{node.name} does not answer ({reply})")
        elif (wrong := not_ok(node.name, reply)) is not None:
            found.append(wrong)
    return "; ".join(found) or None


def trouble_at(url: str) -> str | None:
    """What the node at ``url`` says is wrong with its cluster; None when it says ok or
    does not answer (then nothing is known of the cluster)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    where = client.connection_pool.connection_kwargs  # host and port: the url may hold a password
    try:
        info: dict[str, Any] = client.cluster("INFO")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    return not_ok(f"{where.get('host')}:{where.get('port')}", info)
