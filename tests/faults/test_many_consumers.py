"""Several `atp consume` processes in one group, for real (contract section 7): two share the
input partitions, one of them is killed with SIGKILL mid-stream, a third joins. The group
rebalances each time; the end state must be exactly the reference's."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable

import pytest
import redis

from atp_service.local.services import ClusterService
from tests.conftest import Stack
from tests.faults.harness import (
    Feed,
    Paced,
    Tracked,
    assert_exactly_once,
    assert_projection,
    assert_verify_clean,
    atp_cli,
    documents,
    merged_ends,
    progress,
    projection_differences,
    read_all,
    redis_for,
    reference,
    tail,
    wait_applying,
    wait_consumed,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 7_007
EVENTS = 12_000
RATE = 1_500.0


def produce_the_rest_and_wait(
    stack: Stack, client: redis.Redis, flow: Paced, producer: Tracked
) -> None:
    """Produce what is left at full speed; wait until the stored offsets reach its end."""
    flow.hurry.set()
    flow.join(60)
    assert flow.error is None and flow.produced == EVENTS
    producer.flush()
    ends = merged_ends(producer)
    assert wait_consumed(client, stack, ends, timeout=120) == ends


def joined(stack: Stack, n: int, timeout: float = 60.0) -> None:
    """Wait until the n-th process the stack started was given partitions."""
    log = stack.tmp / f"consumer-{n}.log"
    deadline = time.monotonic() + timeout
    while '"assigned [(' not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"consumer {n} got no partitions:\n{tail(stack.logs())}"
        time.sleep(0.1)


def test_two_consumers_one_killed_a_third_joining_end_exact(
    make_stack: Callable[..., Stack],
) -> None:
    # On the cluster only, for the suite's time: a single Redis runs the same consumer code.
    stack = make_stack(redis_kind="cluster")
    client = redis_for(stack)
    settings = stack.settings
    events = Feed(SEED).take(EVENTS)
    model = reference(settings, events)
    assert not model.rejected

    producer = Tracked(settings.kafka.bootstrap)
    flow = Paced(producer, settings, events, RATE)
    first, second = stack.start_consumer(), stack.start_consumer()
    flow.start()
    applied = wait_applying(stack, client, first, 0, "the first consumer")
    joined(stack, 0)
    joined(stack, 1)  # both in the group, sharing the partitions
    assert first.poll() is None and second.poll() is None, tail(stack.logs())
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    killed_at = progress(client, settings)
    assert applied <= killed_at < EVENTS
    third = stack.start_consumer()
    joined(stack, len(stack.processes) - 1)
    wait_applying(stack, client, third, killed_at, "the consumers after the kill")
    produce_the_rest_and_wait(stack, client, flow, producer)
    assert_projection(client, model, " after a kill and a rebalance", stack.layout)
    for consumer in (second, third):
        consumer.send_signal(signal.SIGTERM)
    for consumer in (second, third):
        assert consumer.wait(30) == 0, tail(stack.logs())
    assert_exactly_once(stack, client, model)
    assert_verify_clean(stack)

    # What a marketplace sync job keeps (the last message per key) is what a read says.
    last: dict[tuple[str, str], int] = {}
    for message in read_all(settings.kafka.bootstrap, settings.topics.availability):
        event = json.loads(message.value())
        last[event["channel"], event["sku"]] = event["available_to_sell"]
    reads = documents(client, sorted(last), stack.layout)
    wrong = {
        pair: (value, (reads[pair] or {}).get("available_to_sell"))
        for pair, value in last.items()
        if (reads[pair] or {}).get("available_to_sell") != value
    }
    assert not wrong, f"{len(wrong)} (channel, sku) whose last message is not the read: {wrong}"


def test_a_primary_failing_over_mid_stream_delays_and_verify_names_any_loss(
    make_stack: Callable[..., Stack], redis_cluster: ClusterService
) -> None:
    """A primary is killed while the consumer writes; its replica takes over. Redis may lose
    the writes it had not replicated (contract section 7): the consumer goes on, and `atp
    verify` finds exactly the skus that differ from the reference."""
    stack = make_stack(redis_kind="cluster")
    client = redis_for(stack)
    settings = stack.settings
    events = Feed(SEED + 1).take(EVENTS)
    model = reference(settings, events)
    producer = Tracked(settings.kafka.bootstrap)
    flow = Paced(producer, settings, events, RATE)
    consumer = stack.start_consumer()
    flow.start()
    wait_applying(stack, client, consumer, 0, "the consumer")
    time.sleep(0.5)
    # Not the node the url names: a client starting later (atp verify) must reach one.
    victim = next(p for p in redis_cluster.primaries() if f":{p.port}/" not in settings.redis.url)
    redis_cluster.fail_over_by_kill(victim)
    try:
        produce_the_rest_and_wait(stack, client, flow, producer)
        assert consumer.poll() is None, f"the consumer died:\n{tail(stack.logs())}"
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(30) == 0, tail(stack.logs())
        differences = projection_differences(client, model, layout=stack.layout)
        verify = atp_cli(stack, "verify")
        if not differences:
            assert verify.returncode == 0, verify.stdout + verify.stderr
        else:  # what the failover lost: every sku that differs is named
            assert verify.returncode == 1
            lost = {line.split()[0].split("/")[1] for line in differences}
            assert all(sku in verify.stdout for sku in lost), (lost, verify.stdout)
    finally:
        redis_cluster.rejoin(victim)
