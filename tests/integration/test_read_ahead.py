"""The consumer reads the next batch while a batch's Redis write is in flight.

Against a real Redis: the batch read ahead is held, not applied, until its turn; a write
that fails leaves both batches to be applied once each; a rebalance during the read-ahead
sees the offsets of the write that was in flight, and a batch whose write did not land by
then is abandoned (it is delivered again from the offsets in Redis); a read-ahead that fails
stops the loop rather than dropping what it consumed.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from streams.consumer import ConsumerLoop, ReadAheadFailed
from tests.integration.inprocess import TOPIC, QueueConsumer, batch, on_hand, stored_offset

pytestmark = pytest.mark.integration


def test_the_batch_read_ahead_is_held_and_applied_next(stream: ConsumerLoop) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    consumer.batches = [batch(3, 2)]
    stream.process(batch(0, 3), read_ahead=True)
    assert stored_offset(stream) == 3 and on_hand(stream) == 3
    ahead = stream.take_ahead()
    assert ahead is not None
    messages, decoded = ahead
    assert [m.offset() for m in messages] == [3, 4] and decoded is not None
    stream.process(messages, decoded, read_ahead=True)
    assert stored_offset(stream) == 5 and on_hand(stream) == 5
    assert stream.stats.applied == 5 and stream.stats.consumed == 5


def test_a_failed_write_loses_nothing_read_ahead_and_counts_nothing_twice(
    stream: ConsumerLoop,
) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    consumer.batches = [batch(3, 2)]
    stream.store.fail_next = True  # type: ignore[attr-defined]
    with pytest.raises(redis.ConnectionError):
        stream.process(batch(0, 3), read_ahead=True)
    assert stored_offset(stream) is None
    stream.process(batch(0, 3), read_ahead=True)  # the loop's retry of the same batch
    ahead = stream.take_ahead()
    assert ahead is not None
    messages, decoded = ahead
    stream.process(messages, decoded, read_ahead=True)
    assert stored_offset(stream) == 5 and on_hand(stream) == 5 and stream.stats.applied == 5


def test_a_rebalance_during_the_read_ahead_sees_the_write_in_flight(
    stream: ConsumerLoop,
) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    seen: list[int | None] = []

    def rebalance() -> None:
        partition = TopicPartition(TOPIC, 0)
        stream.on_assign(consumer, [partition])  # type: ignore[arg-type]
        seen.append(consumer.assigned[0].offset)

    consumer.inside_consume = rebalance
    stream.process(batch(0, 3), read_ahead=True)
    # Assigned at the offset after the batch whose write was in flight, not before it.
    assert seen == [3]


def test_a_rebalance_while_the_write_does_not_land_abandons_the_batch(
    stream: ConsumerLoop,
) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    seen: list[int | None] = []

    def rebalance() -> None:
        stream.on_assign(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
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
    stream: ConsumerLoop, failure: Exception
) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    consumer.failure = failure
    # Not a Redis or OS error: the loop's retry-in-place (``_retrying``) must not catch it.
    with pytest.raises(ReadAheadFailed):
        stream.process(batch(0, 3), read_ahead=True)
    assert stored_offset(stream) == 3 and on_hand(stream) == 3
    assert stream.take_ahead() is None


def test_the_loop_applies_every_batch_once(stream: ConsumerLoop) -> None:
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
