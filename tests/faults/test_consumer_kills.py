"""Issue 4, fault test 1: kill -9 of the consumer at 10 random points while 50,000 events flow.

After every kill the consumer is started again. At the end the projection equals the
reference fold of the events, every event is applied exactly once (ledger, dedupe marks),
the stored offsets are the end of every partition, and `atp verify` finds nothing.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import pytest

from atp_service import keys
from streams.ledger import Ledger
from tests.conftest import Stack
from tests.faults.harness import (
    Feed,
    Paced,
    Tracked,
    assert_exactly_once,
    assert_projection,
    assert_verify_clean,
    merged_ends,
    progress,
    redis_for,
    reference,
    stored_offsets,
    tail,
    topic_of,
    wait_applying,
    wait_consumed,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 4_001
EVENTS = 50_000
KILLS = 10
RATE = 900.0  # events/s while the kills happen; the rest follows at full speed


def test_kill_9_at_random_points_loses_nothing_and_applies_nothing_twice(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    client = redis_for(stack)
    settings = stack.settings
    rng = random.Random(SEED)
    events = Feed(SEED).take(EVENTS)
    model = reference(settings, events)
    assert not model.rejected and len(model.applied_ids) == EVENTS

    producer = Tracked(settings.kafka.bootstrap)
    flow = Paced(producer, settings, events, RATE)
    consumer = stack.start_consumer()
    flow.start()
    kills: list[tuple[int, int]] = []  # (applied when killed, produced when killed)
    applied_before = 0
    for k in range(KILLS):
        wait_applying(stack, client, consumer, applied_before, f"consumer incarnation {k}")
        time.sleep(rng.uniform(0.0, 0.35))
        assert consumer.poll() is None, f"consumer {k} exited by itself:\n{tail(stack.logs())}"
        assert flow.is_alive(), f"the events stopped flowing before kill {k}: slow restarts?"
        consumer.send_signal(signal.SIGKILL)
        assert consumer.wait(10) == -signal.SIGKILL
        applied = progress(client, settings)
        kills.append((applied, flow.produced))
        assert applied > applied_before, f"incarnation {k} applied nothing before its kill"
        applied_before = applied
        consumer = stack.start_consumer()
    flow.hurry.set()
    flow.join(60)
    assert flow.error is None and flow.produced == EVENTS
    producer.flush()

    # Every kill landed mid-stream: the killed incarnation had applied events, more were
    # still to come (the stream was flowing, and had not all been applied).
    assert len(kills) == KILLS
    assert all(applied < EVENTS for applied, _ in kills), kills
    assert sum(1 for applied, produced in kills if applied < produced) >= KILLS // 2, kills

    ends = merged_ends(producer)
    assert sum(ends.values()) == EVENTS
    stored = wait_consumed(client, stack, ends, timeout=120)
    assert stored == ends
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    assert len(stack.processes) == KILLS + 1

    assert_projection(client, model, f" after {KILLS} kills at {kills}")
    assert_exactly_once(stack, client, model)
    assert_verify_clean(stack)


@pytest.mark.parametrize("first_batch", [False, True], ids=["later-batch-of-a-partition", "first-batch-of-a-partition"])
def test_kill_between_the_ledger_write_and_the_redis_write(make_stack: Callable[..., Stack], first_batch: bool) -> None:
    """The crash window the ledger reconciliation exists for, hit deterministically.

    Redis is paused for writes (CLIENT PAUSE WRITE): the consumer reads, folds, writes the
    batch's ledger file, then blocks in its Redis write script; it is killed there. The
    ledger now holds a batch Redis never got. Restarted, the consumer must drop that file
    (its offsets come again from Redis), consume the batch again and go on, whether or not
    the partition had ever been written to Redis before.
    """
    stack = make_stack()
    settings = stack.settings
    client = redis_for(stack)
    movements, reservations = settings.topics.movements, settings.topics.reservations
    feed = Feed(SEED + 1)
    warm = [e for e in feed.take(400) if e["type"] in ("bin_movement", "bin_count")][:100]
    producer = Tracked(settings.kafka.bootstrap)
    consumer = stack.start_consumer()
    for event in warm:
        producer.event(settings, event, partition=0)
    producer.flush()
    wait_consumed(client, stack, merged_ends(producer))
    target = (reservations, 1) if first_batch else (movements, 0)
    batch = [e for e in feed.take(600) if topic_of(settings, e) == target[0]][:100]
    before = stored_offsets(client, settings).get(target)
    assert (before is None) == first_batch
    directory = Ledger(settings.ledger.dir).partition_dir(*target)
    files_before = set(directory.glob("*.parquet"))

    # Nothing else may be waiting to be written when Redis pauses (an outbox ack blocked in
    # a sweep would pause the partitions instead of reaching our batch).
    wait_for(lambda: client.hlen(keys.OUTBOX) == 0, 30, "the availability outbox published")
    client.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        for event in batch:
            producer.event(settings, event, partition=target[1])
        producer.flush()
        wait_for(lambda: bool(set(directory.glob("*.parquet")) - files_before), 40, "the batch's ledger file")
        time.sleep(0.3)  # the consumer is now blocked in its Redis write
        consumer.send_signal(signal.SIGKILL)
        assert consumer.wait(10) == -signal.SIGKILL
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
    assert stored_offsets(client, settings).get(target) == before, "the batch reached Redis: not the window aimed at"

    consumer = stack.start_consumer()
    ends = merged_ends(producer)
    deadline = time.monotonic() + 60
    while not all(stored_offsets(client, settings).get(tp, 0) >= end for tp, end in ends.items()):
        code = consumer.poll()
        assert code is None, (
            f"after a kill between the ledger write and the Redis write of {target[0]}[{target[1]}], "
            f"the restarted consumer exited with code {code}:\n{tail(stack.logs(), 5)}"
        )
        assert time.monotonic() < deadline, f"not consumed:\n{tail(stack.logs())}"
        time.sleep(0.05)
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    model = reference(settings, warm + batch)
    assert_projection(client, model)
    assert_exactly_once(stack, client, model)
    assert_verify_clean(stack)
