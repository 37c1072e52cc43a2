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

from atp_service.store import keys
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


def test_kill_9_at_random_points_loses_nothing_and_applies_nothing_twice(
    make_stack: Callable[..., Stack],
) -> None:
    # Writes in steps of a few skus, so that kills land between the steps of a write too.
    stack = make_stack(redis_options={"skus_per_script": 8})
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


def test_kill_between_the_ledger_file_and_dropping_its_staged_rows(
    make_stack: Callable[..., Stack],
) -> None:
    """The one crash window of the ledger with two copies of some rows, hit deterministically.

    A batch's ledger rows are staged in Redis with its state and offsets; the consumer's
    flusher then writes them to a file and deletes them from Redis. Here Redis is paused for
    writes (CLIENT PAUSE WRITE) once the batch is in Redis: the flusher writes the file, then
    blocks deleting the staged rows, and the consumer is killed there. Restarted, it must
    not write those rows to the ledger a second time, and must go on consuming.
    """
    stack = make_stack()
    settings = stack.settings
    client = redis_for(stack)
    movements = settings.topics.movements
    feed = Feed(SEED + 1)
    warm = [e for e in feed.take(400) if e["type"] in ("bin_movement", "bin_count")][:100]
    producer = Tracked(settings.kafka.bootstrap)
    consumer = stack.start_consumer()
    for event in warm:
        producer.event(settings, event, partition=0)
    producer.flush()
    wait_consumed(client, stack, merged_ends(producer))
    batch = [e for e in feed.take(600) if topic_of(settings, e) == movements][:100]
    directory = Ledger(settings.ledger.dir).partition_dir(movements, 0)
    # Nothing else may be waiting to be written when Redis pauses (an outbox ack blocked in
    # a sweep would pause the partitions; staged rows of the warm-up would be flushed).
    wait_for(
        lambda: client.hlen(keys.SINGLE.outbox_key(0)) == 0, 30, "the availability outbox published"
    )
    wait_for(
        lambda: client.hlen(keys.SINGLE.staged_key(0)) == 0,
        30,
        "the warm-up's ledger rows in files",
    )
    files_before = set(directory.glob("*.parquet"))

    for event in batch:
        producer.event(settings, event, partition=0)
    producer.flush()
    ends = merged_ends(producer)
    # The batch reaches Redis and is staged; pause before the flusher (1 s) moves it.
    wait_for(
        lambda: stored_offsets(client, settings).get((movements, 0), 0) >= ends[(movements, 0)],
        20,
        "the batch in Redis",
    )
    client.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        assert client.hlen(keys.SINGLE.staged_key(0)) > 0, (
            "the batch's rows left Redis before the pause: not the window aimed at"
        )
        wait_for(
            lambda: bool(set(directory.glob("*.parquet")) - files_before),
            20,
            "the batch's ledger file",
        )
        time.sleep(0.3)  # the flusher is now blocked deleting the staged rows
        consumer.send_signal(signal.SIGKILL)
        assert consumer.wait(10) == -signal.SIGKILL
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
    assert client.hlen(keys.SINGLE.staged_key(0)) > 0, (
        "the staged rows were deleted: not the window aimed at"
    )

    consumer = stack.start_consumer()
    wait_for(
        lambda: client.hlen(keys.SINGLE.staged_key(0)) == 0,
        30,
        "the staged rows settled by the restarted consumer",
    )
    assert consumer.poll() is None, f"the restarted consumer exited:\n{tail(stack.logs(), 5)}"
    more = [e for e in feed.take(600) if topic_of(settings, e) == movements][:50]
    for event in more:
        producer.event(settings, event, partition=0)
    producer.flush()
    wait_consumed(client, stack, merged_ends(producer))
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    model = reference(settings, warm + batch + more)
    assert_projection(client, model)
    assert_exactly_once(stack, client, model)
    assert_verify_clean(stack)
