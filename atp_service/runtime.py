"""Wiring: build the real adapters from Settings (the only place that connects them)."""

from __future__ import annotations

from collections.abc import Callable

import redis
from confluent_kafka import Consumer, Producer

from atp_service.config import Settings
from atp_service.model import projector_for
from atp_service.store.packer import ChunkedPacker
from atp_service.store.redis_store import RedisStore
from streams.consumer import ConsumerOptions, StreamProjector
from streams.kafka import ReliableProducer, consumer_config, producer_config
from streams.ledger import Ledger
from streams.state import US_PER_DAY

ALIVE_FILE = "/tmp/atp-consumer-alive"  # the Helm chart's exec probe checks its age


def sync_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis.url,
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=5,
        command_packer=ChunkedPacker(),
    )


def store_for(settings: Settings, client: redis.Redis | None = None) -> RedisStore:
    return RedisStore(
        client or sync_redis(settings),
        settings.kafka.group_id,
        int(settings.consumer.dedupe_window_days * US_PER_DAY // 1000),
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
    )


def build_stream_projector(
    settings: Settings, should_stop: Callable[[], bool] = lambda: False
) -> StreamProjector:
    consumer = Consumer(
        consumer_config(
            settings.kafka.bootstrap, settings.kafka.group_id, settings.kafka.session_timeout_ms
        )
    )
    producer = ReliableProducer(Producer(producer_config(settings.kafka.bootstrap)), should_stop)
    return StreamProjector(
        consumer,
        producer,
        store_for(settings),
        projector_for(settings),
        consumer_options(settings, ALIVE_FILE),
        ledger=Ledger(settings.ledger.dir),
    )
