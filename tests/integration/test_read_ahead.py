"""The consumer reads the next batch while a batch's Redis write is in flight.

Against a real Redis: the batch read ahead is held, not applied, until its turn; a write
that fails leaves both batches to be applied once each; a rebalance during the read-ahead
sees the offsets of the write that was in flight, and a batch whose write did not land by
then is abandoned (it is delivered again from the offsets in Redis); a read-ahead that fails
stops the loop rather than dropping what it consumed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from atp_service import keys
from atp_service.app import projector_for
from atp_service.config import Settings, parse_config
from atp_service.store import RedisStore
from streams.consumer import ConsumerOptions, ReadAheadFailed, StreamProjector, offset_field
from tests.conftest import config_text
from tests.faults.test_stateful_model import FakeConsumer, FakeMessage, FakeProducer

TOPIC = "wms.bin-movements"


def receipt(n: int, quantity: int = 1) -> bytes:
    return json.dumps({
        "type": "bin_movement", "event_id": f"e-{n}", "occurred_at": "2026-11-27T08:00:00Z",
        "sku": "SKU-1", "location": "DC-EAST", "quantity": quantity,
        "to_bin": "A1", "to_status": "available",
    }).encode()  # fmt: skip


class QueueConsumer(FakeConsumer):
    """Hands out queued batches from consume(), and runs a hook inside it (as librdkafka runs
    rebalance callbacks inside consume)."""

    def __init__(self, batches: list[list[FakeMessage]]) -> None:
        super().__init__()
        self.batches = batches
        self.inside_consume: Any = None
        self.failure: Exception | None = None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if self.inside_consume is not None:
            hook, self.inside_consume = self.inside_consume, None
            hook()
        if self.failure is not None:
            raise self.failure
        return self.batches.pop(0) if self.batches else []


class SlowStore(RedisStore):
    """A real store whose writes take a while (and can be made to fail once)."""

    delay_s = 0.2
    fail_next = False
    conflict_next = False

    def write(self, changes: Any, now_ms: int) -> list[str]:
        time.sleep(self.delay_s)
        if self.fail_next:
            self.fail_next = False
            raise redis.ConnectionError("redis went away")
        if self.conflict_next:  # as when the API wrote one of the skus since the read
            self.conflict_next = False
            return [changes.skus[0].sku]
        return super().write(changes, now_ms)


def batch(first: int, count: int) -> list[FakeMessage]:
    return [FakeMessage(TOPIC, 0, n, receipt(n), b"SKU-1") for n in range(first, first + count)]


def options_for(settings: Settings) -> ConsumerOptions:
    return ConsumerOptions(
        topics=(TOPIC,), dead_letter_topic="dlq", availability_topic="availability",
        known_channels=frozenset(c.name for c in settings.channels), batch_size=100,
        batch_timeout_s=0.01, sweep_interval_s=60, window_us=7 * 86_400_000_000,
        max_message_bytes=1_000_000,
    )  # fmt: skip


@pytest.fixture
def stream(redis_url: str, tmp_path: Path) -> StreamProjector:
    settings = parse_config(config_text(redis_url=redis_url, ledger_dir=str(tmp_path / "ledger")))
    redis.Redis.from_url(redis_url).set(keys.INITIALIZED, "test")
    options = options_for(settings)
    store = SlowStore(redis.Redis.from_url(redis_url), settings.kafka.group_id, 7 * 86_400_000)
    return StreamProjector(QueueConsumer([]), FakeProducer(), store, projector_for(settings), options)  # type: ignore[arg-type]


def on_hand(stream: StreamProjector) -> int:
    raw = stream.store.client.hget(keys.sku_key("SKU-1"), keys.projection_field("web"))
    return int(json.loads(raw)["on_hand"]) if raw else 0


def stored_offset(stream: StreamProjector) -> int | None:
    return stream.store.offsets().get(offset_field(TOPIC, 0))


def test_the_batch_read_ahead_is_held_and_applied_next(stream: StreamProjector) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    consumer.batches = [batch(3, 2)]
    stream.process(batch(0, 3), read_ahead=True)
    assert stored_offset(stream) == 3 and on_hand(stream) == 3
    assert stream._ahead is not None
    messages, decoded = stream._ahead
    assert [m.offset() for m in messages] == [3, 4] and decoded is not None
    stream._ahead = None
    stream.process(messages, decoded, read_ahead=True)
    assert stored_offset(stream) == 5 and on_hand(stream) == 5
    assert stream.stats.applied == 5 and stream.stats.consumed == 5


def test_a_failed_write_loses_nothing_read_ahead_and_counts_nothing_twice(stream: StreamProjector) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    consumer.batches = [batch(3, 2)]
    stream.store.fail_next = True  # type: ignore[attr-defined]
    with pytest.raises(redis.ConnectionError):
        stream.process(batch(0, 3), read_ahead=True)
    assert stored_offset(stream) is None and stream._ahead is not None
    stream.process(batch(0, 3), read_ahead=True)  # the loop's retry of the same batch
    messages, decoded = stream._ahead
    stream._ahead = None
    stream.process(messages, decoded, read_ahead=True)
    assert stored_offset(stream) == 5 and on_hand(stream) == 5 and stream.stats.applied == 5


def test_a_rebalance_during_the_read_ahead_sees_the_write_in_flight(stream: StreamProjector) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    seen: list[int | None] = []

    def rebalance() -> None:
        partition = TopicPartition(TOPIC, 0)
        stream._on_assign(consumer, [partition])  # type: ignore[arg-type]
        seen.append(consumer.assigned[0].offset)

    consumer.inside_consume = rebalance
    stream.process(batch(0, 3), read_ahead=True)
    # Assigned at the offset after the batch whose write was in flight, not before it.
    assert seen == [3]


def test_a_rebalance_while_the_write_does_not_land_abandons_the_batch(stream: StreamProjector) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    seen: list[int | None] = []

    def rebalance() -> None:
        stream._on_assign(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
        seen.append(consumer.assigned[0].offset)

    consumer.inside_consume = rebalance
    stream.store.conflict_next = True  # type: ignore[attr-defined]
    stream.process(batch(0, 3), read_ahead=True)
    # Sought to the start (nothing stored), so the batch comes again: applying it here too
    # would count it twice.
    assert seen == [OFFSET_BEGINNING]
    assert stored_offset(stream) is None and on_hand(stream) == 0 and stream.stats.applied == 0


@pytest.mark.parametrize("failure", [KafkaException("broker went away"), OSError("no memory")])
def test_a_failed_read_ahead_stops_the_loop_instead_of_dropping_messages(
    stream: StreamProjector, failure: Exception
) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    consumer.failure = failure
    # Not a Redis or OS error: the loop's retry-in-place (``_retrying``) must not catch it.
    with pytest.raises(ReadAheadFailed):
        stream.process(batch(0, 3), read_ahead=True)
    assert stored_offset(stream) == 3 and on_hand(stream) == 3 and stream._ahead is None


def test_the_loop_applies_every_batch_once(stream: StreamProjector) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    consumer.subscribe = lambda topics, **kw: None  # type: ignore[attr-defined]
    consumer.close = lambda: None  # type: ignore[attr-defined]
    consumer.batches = [batch(0, 2), batch(2, 2), batch(4, 2), batch(6, 2)]
    stop = threading.Event()
    runner = threading.Thread(target=stream.run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 20
    while stored_offset(stream) != 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    runner.join(10)
    assert stored_offset(stream) == 8 and on_hand(stream) == 8
    assert stream.stats.applied == 8 and stream.stats.duplicates == 0
