"""Wiring: build the real adapters from Settings (the only place that connects them)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import redis
from confluent_kafka import Consumer, Producer

from atp_service.config import ConfigError, Settings
from atp_service.model import projector_for
from atp_service.store import cluster_state, keys
from atp_service.store.packer import ChunkedPacker
from atp_service.store.redis_store import RedisStore
from streams.consumer import ConsumerLoop, ConsumerOptions
from streams.kafka import ReliableProducer, consumer_config, producer_config
from streams.ledger import Ledger
from streams.state import US_PER_DAY

log = logging.getLogger(__name__)

ALIVE_FILE = "/tmp/atp-consumer-alive"  # the Helm chart's exec probe checks its age


NOT_A_CLUSTER: Final = "Cluster mode is not enabled"


def cluster_mismatch(settings: Settings, cluster_enabled: bool) -> ConfigError | None:
    """The error to stop with when `redis.cluster` says other than the server does."""
    if settings.redis.cluster and not cluster_enabled:
        return ConfigError(
            f"`redis.cluster` is true (or ATP_REDIS_CLUSTER=1) but {settings.redis.url} "
            "is not a Redis Cluster node: set it to false, or name a cluster node"
        )
    if not settings.redis.cluster and cluster_enabled:
        return ConfigError(
            f"{settings.redis.url} is a Redis Cluster node but `redis.cluster` is false: "
            "set `redis.cluster = true` (or ATP_REDIS_CLUSTER=1)"
        )
    return None


def check_redis_mode(settings: Settings, client: redis.Redis | None = None) -> None:
    """Raise ConfigError if the server (``client``'s, or the url's) answers and is a cluster
    node where the config says it is not, or the reverse; one that does not answer is not
    checked."""
    plain = client or redis.Redis.from_url(settings.redis.url, socket_connect_timeout=2.0)
    try:
        enabled = bool(plain.info("cluster").get("cluster_enabled"))
    except (redis.RedisError, OSError):  # down now: whoever uses it waits for it
        return
    finally:
        if client is None:
            plain.close()
    mismatch = cluster_mismatch(settings, enabled)
    if mismatch is not None:
        raise mismatch


def sync_redis(settings: Settings, retry_s: float = 1.0) -> redis.Redis:
    """A client of the configured Redis. A cluster client learns the slot map when made,
    so while no node answers this waits (``retry_s`` between tries) instead of failing.

    Raises:
        ConfigError: the server is a cluster node and the config says it is not, or the
            reverse (checked when the server answers).
    """
    if settings.redis.cluster:
        while True:
            try:
                cluster: redis.Redis = redis.RedisCluster.from_url(  # type: ignore[assignment]
                    settings.redis.url, socket_connect_timeout=2.0, socket_timeout=10.0
                )
                return cluster
            except redis.RedisClusterException as exc:
                if NOT_A_CLUSTER in str(exc):
                    check_redis_mode(settings)
                # Nodes that answer but serve not every slot are no outage of Redis: say so.
                trouble = cluster_state.trouble_at(settings.redis.url)
                if trouble is not None:
                    log.warning("the Redis Cluster is not ok (%s: %s); waiting", trouble, exc)
                else:
                    log.warning("no Redis Cluster node answers (%s); retrying", exc)
                time.sleep(retry_s)
    client = redis.Redis.from_url(
        settings.redis.url,
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=5,
        command_packer=ChunkedPacker(),
    )
    check_redis_mode(settings, client)
    return client


def layout_for(settings: Settings) -> keys.Layout:
    return keys.Layout(settings.redis.shard_count)


def store_for(settings: Settings, client: redis.Redis | None = None) -> RedisStore:
    return RedisStore(
        client or sync_redis(settings),
        settings.kafka.group_id,
        int(settings.consumer.dedupe_window_days * US_PER_DAY // 1000),
        layout_for(settings),
        settings.redis.cluster,
        settings.redis.skus_per_script,
    )


def consumer_options(settings: Settings, alive_file: str | None = None) -> ConsumerOptions:
    topics = settings.topics
    return ConsumerOptions(
        topics=(topics.movements, topics.reservations, topics.inbound),
        dead_letter_topic=topics.dead_letter,
        availability_topic=topics.availability,
        reservations_topic=topics.reservations,
        allocation_updates_topic=topics.allocation_updates,
        stock_states_topic=topics.stock_states,
        known_channels=frozenset(c.name for c in settings.channels),
        batch_size=settings.consumer.batch_size,
        batch_timeout_s=settings.consumer.batch_timeout_ms / 1000,
        sweep_interval_s=settings.consumer.sweep_interval_ms / 1000,
        window_us=int(settings.consumer.dedupe_window_days * US_PER_DAY),
        max_message_bytes=settings.consumer.max_message_bytes,
        alive_file=alive_file,
        kits=tuple(kit.definition() for kit in settings.kits),
        shards=settings.redis.shard_count,
    )


def build_consumer_loop(
    settings: Settings, should_stop: Callable[[], bool] = lambda: False
) -> ConsumerLoop:
    consumer = Consumer(
        consumer_config(
            settings.kafka.bootstrap, settings.kafka.group_id, settings.kafka.session_timeout_ms
        )
    )
    producer = ReliableProducer(Producer(producer_config(settings.kafka.bootstrap)), should_stop)
    return ConsumerLoop(
        consumer,
        producer,
        store_for(settings),
        projector_for(settings),
        consumer_options(settings, ALIVE_FILE),
        ledger=Ledger(settings.ledger.dir),
    )
