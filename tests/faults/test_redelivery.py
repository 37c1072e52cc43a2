"""Issue 4, fault test 2: 30% of the events redelivered (same event_id, identical body).

Redeliveries come three ways: in the same partition after the original, to another
partition of the same topic (explicit partition), and to a consumer started again (after a
SIGTERM and after a kill -9). None of them changes the projection; the ledger records each
as a duplicate and each original as applied once.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Stack
from tests.faults.harness import (
    PARTITIONS,
    Feed,
    Tracked,
    assert_exactly_once,
    assert_projection,
    assert_verify_clean,
    home_partition,
    merged_ends,
    redis_for,
    reference,
    wait_consumed,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 4_002
ORIGINALS = 10_000
SHARE = 0.30


def test_redelivered_events_change_nothing(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    settings = stack.settings
    client = redis_for(stack)
    rng = random.Random(SEED)
    events = Feed(SEED).take(ORIGINALS)
    model = reference(settings, events)
    assert not model.rejected
    per_phase = int(ORIGINALS * SHARE) // 3
    producer = Tracked(settings.kafka.bootstrap)
    duplicates = 0

    def send(event: dict[str, Any], partition: int) -> None:
        producer.event(settings, event, partition=partition)

    def elsewhere(event: dict[str, Any]) -> int:
        return (home_partition(event["sku"]) + rng.randint(1, PARTITIONS - 1)) % PARTITIONS

    # Phase 1: the first half, with redeliveries in the same partition after their original.
    first = events[: ORIGINALS // 2]
    keyed = [(float(i), event) for i, event in enumerate(first)]
    for _ in range(per_phase):
        i = rng.randrange(len(first))
        keyed.append((rng.uniform(i + 0.5, len(first)), first[i]))
    stream = [event for _, event in sorted(keyed, key=lambda pair: pair[0])]
    consumer = stack.start_consumer()
    for event in stream:
        send(event, home_partition(event["sku"]))
    duplicates += per_phase
    producer.flush()
    wait_consumed(client, stack, merged_ends(producer))
    assert_projection(client, reference(settings, first), " after phase 1")

    # Phase 2: redeliveries to other partitions of the same topic, among the second half.
    second = events[ORIGINALS // 2 :]
    mixed: list[tuple[dict[str, Any], int]] = [(e, home_partition(e["sku"])) for e in second]
    for _ in range(per_phase):
        old = rng.choice(first)
        mixed.insert(rng.randrange(len(mixed) + 1), (old, elsewhere(old)))
    for event, partition in mixed:
        send(event, partition)
    duplicates += per_phase
    producer.flush()
    wait_consumed(client, stack, merged_ends(producer))
    assert_projection(client, model, " after phase 2")

    # Phase 3: redeliveries of anything to a consumer started again, after a clean stop
    # and after a kill -9 (half each, home partition or another one).
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    rest = int(ORIGINALS * SHARE) - 2 * per_phase
    for n in range(rest):
        if n == rest // 2:
            consumer = stack.start_consumer()
            producer.flush()
            wait_consumed(client, stack, merged_ends(producer))
            consumer.send_signal(signal.SIGKILL)
            assert consumer.wait(10) == -signal.SIGKILL
        old = rng.choice(events)
        send(old, home_partition(old["sku"]) if n % 2 else elsewhere(old))
    duplicates += rest
    assert duplicates == int(ORIGINALS * SHARE)
    consumer = stack.start_consumer()
    producer.flush()
    stored = wait_consumed(client, stack, merged_ends(producer))
    assert sum(stored.values()) == ORIGINALS + duplicates
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0

    assert_projection(client, model, " after redeliveries across restarts")
    assert_exactly_once(stack, client, model, duplicates=duplicates)
    assert_verify_clean(stack)
