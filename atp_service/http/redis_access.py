"""What the routes that ask Redis directly are given: the client and the key layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atp_service.store.keys import Layout


@dataclass(frozen=True)
class RedisAccess:
    # redis.asyncio.Redis, or RedisCluster on a Redis Cluster: alike for what routes ask.
    # Wrapped because the framework checks an injected value against its annotation.
    client: Any
    layout: Layout
