"""The consumer's partitions: where each starts, the offsets committed to Kafka as a hint,
lag, and retrying a step with the partitions paused while the store is unreachable.

The offsets that count are the ones written to the store with the state; Kafka's are only
a hint for tools. Every assignment starts from the store's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams import metrics
from streams.consumer.batch import position
from streams.consumer.options import OFFSET_FIELD_SEPARATOR, offset_field
from streams.ledger import Ledger

log = logging.getLogger(__name__)
T = TypeVar("T")


def start_from(
    stored: dict[str, int], ledger: Ledger | None, partitions: list[TopicPartition]
) -> None:
    """Set each partition's offset to ``stored``, the store's offsets (read once the store
    is known to be initialized: the offsets of an emptied store are not to be trusted)."""
    for tp in partitions:
        stored_offset = stored.get(offset_field(tp.topic, tp.partition))
        if ledger is not None:
            # Files at or past the stored offset (all of them when none is stored) come
            # from batches that never reached the store.
            removed = ledger.reconcile(tp.topic, tp.partition, stored_offset)
            if removed:
                log.info(
                    "ledger: removed %d file(s) of %s[%d] past offset %s (batch never reached Redis)",
                    removed, tp.topic, tp.partition, stored_offset,
                )  # fmt: skip
        tp.offset = OFFSET_BEGINNING if stored_offset is None else stored_offset


def commit(consumer: Consumer, offsets: dict[str, int]) -> None:
    """Kafka's committed offsets, asynchronously: a hint for tools, never a position."""
    if not offsets:
        return
    partitions = []
    for name, offset in offsets.items():
        topic, partition = name.split(OFFSET_FIELD_SEPARATOR)
        partitions.append(TopicPartition(topic, int(partition), offset))
    try:
        consumer.commit(offsets=partitions, asynchronous=True)
    except Exception as exc:  # the store's offsets are authoritative; Kafka's can lag
        log.warning("kafka commit failed (%s); offsets are safe in Redis", exc)


def lag(consumer: Consumer, offsets: dict[str, int]) -> dict[str, int]:
    """Messages behind each partition's end ("topic/partition" -> count), as metrics too."""
    out: dict[str, int] = {}
    for name, offset in offsets.items():
        topic, partition = name.split(OFFSET_FIELD_SEPARATOR)
        try:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, int(partition)), timeout=0.5, cached=True
            )
        except Exception:  # lag is best effort; never stall the loop for it
            continue
        metrics.LAG.labels(topic, partition).set(max(0, high - offset))
        out[f"{topic}/{partition}"] = max(0, high - offset)
    return out


def retrying(
    step: Callable[[], Any],
    stop: threading.Event,
    consumer: Consumer,
    transient: tuple[type[Exception], ...],
    alive: Callable[[], None],
) -> None:
    """Run a step until it succeeds: store or broker outages delay, never lose. While it
    fails, the partitions are paused but still polled, so the group does not evict us."""
    delay = 0.1
    paused: list[TopicPartition] = []
    while True:
        try:
            step()
            break
        except transient as exc:
            log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
        if stop.is_set() and not paused:
            # Shutting down: the batch is not applied and not committed; the next start
            # consumes it again.
            return
        if not paused:
            paused = consumer.assignment()
            if paused:
                consumer.pause(paused)
        # Keep polling while paused (max.poll.interval). A partition assigned meanwhile is
        # not paused: rewind whatever it delivered.
        for message in consumer.consume(num_messages=1, timeout=delay):
            if message.error() is None:
                consumer.seek(TopicPartition(*position(message)))
        alive()
        if stop.is_set():
            return
        delay = min(delay * 2, 5.0)
    if paused:
        consumer.resume(paused)


class Stopped(Exception):
    """Asked to stop while waiting for the store's offsets: no partition was started from
    them, so nothing moved."""


def retrying_plain(
    step: Callable[[], T],
    transient: tuple[type[Exception], ...],
    stop: threading.Event | None = None,
) -> T:
    """Retry a store step inside a Kafka callback, where pausing cannot run. Raises
    Stopped once ``stop`` is set: a consumer asked to stop while Redis is down must not
    wait for it (librdkafka raises the callback's error from the loop's consume)."""
    delay = 0.1
    while True:
        try:
            return step()
        except transient as exc:
            log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise Stopped from exc
            delay = min(delay * 2, 5.0)
