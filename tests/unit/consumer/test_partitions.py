"""The consumer's partitions (streams/consumer/partitions.py): where each starts (the offsets
stored with the state, never Kafka's), Kafka's committed offsets as a hint, lag, retrying a
step while the store is down; and what a rebalance does in the loop that uses them."""

from __future__ import annotations

import json
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import REGISTRY

from atp_service.config import parse_config
from atp_service.model import projector_for
from streams.consumer import Batch, ConsumerLoop, LedgerAhead, partitions
from streams.consumer.options import ConsumerOptions, offset_field
from streams.ledger import Ledger, LedgerColumns
from tests.conftest import config_text
from tests.fakes import FakeConsumer, FakeMessage, FakeProducer, MemoryStore, StoreDown
from tests.unit.consumer.messages import receipt_value

SETTINGS = parse_config(config_text())
PROJECTOR = projector_for(SETTINGS)
MOVES = "wms.bin-movements"
RESERVATIONS = "oms.reservations"
NOW = 1_796_000_000_000_000
OPTIONS = ConsumerOptions(
    topics=(MOVES, RESERVATIONS), dead_letter_topic="dlq", availability_topic="availability",
    reservations_topic=RESERVATIONS, allocation_updates_topic="atp.allocation-updates",
    stock_states_topic="atp.stock-states",
    known_channels=frozenset(c.name for c in SETTINGS.channels), batch_size=100,
    batch_timeout_s=0.01, sweep_interval_s=60, window_us=7 * 86_400_000_000,
    max_message_bytes=10_000,
)  # fmt: skip


class _Consumer(FakeConsumer):
    """FakeConsumer plus what these steps use of a group consumer: pause and resume, polling
    while paused (``delivered``), partition ends (``high``), a commit that can fail, and the
    rebalance callbacks handed to ``subscribe``."""

    def __init__(self, high: dict[tuple[str, int], int] | None = None) -> None:
        super().__init__()
        self.high = high or {}
        self.delivered: list[FakeMessage] = []
        self.paused: list[tuple[str, int]] = []
        self.resumed: list[tuple[str, int]] = []
        self.polls = 0
        self.commit_error: Exception | None = None
        self.asynchronous: list[bool] = []
        self.on_assign: Callable[[Any, list[TopicPartition]], None] | None = None
        self.on_revoke: Callable[[Any, list[TopicPartition]], None] | None = None

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any) -> None:
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def close(self) -> None:
        pass

    def group_assigns(self, tps: list[TopicPartition]) -> None:
        """The group hands these partitions over (librdkafka runs the callback)."""
        assert self.on_assign is not None, "not subscribed"
        self.on_assign(self, tps)

    def group_revokes(self, tps: list[TopicPartition]) -> None:
        assert self.on_revoke is not None, "not subscribed"
        self.on_revoke(self, tps)

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused.extend((tp.topic, tp.partition) for tp in tps)

    def resume(self, tps: list[TopicPartition]) -> None:
        self.resumed.extend((tp.topic, tp.partition) for tp in tps)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.polls += 1
        out, self.delivered = self.delivered[:num_messages], self.delivered[num_messages:]
        return out

    def get_watermark_offsets(self, tp: TopicPartition, *args: Any, **kw: Any) -> tuple[int, int]:
        if (tp.topic, tp.partition) not in self.high:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return (0, self.high[tp.topic, tp.partition])

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.asynchronous.append(asynchronous)
        super().commit(offsets, asynchronous)


def where(tps: list[TopicPartition]) -> list[tuple[str, int, int]]:
    return [(tp.topic, tp.partition, tp.offset) for tp in tps]


def rows(partition: int, offsets: range) -> LedgerColumns:
    n = len(offsets)
    return LedgerColumns(
        sources=[(MOVES, partition, o, b"{}", None) for o in offsets],
        event_id=[f"e-{o}" for o in offsets], type=["bin_movement"] * n, sku=["SKU-1"] * n,
        location=["DC-EAST"] * n, channel=[None] * n, quantity=[1] * n,
        occurred_at_us=[1_000_000] * n, status=["applied"] * n, reason=[None] * n,
    )  # fmt: skip


def file_names(ledger: Ledger) -> list[str]:
    return [f"{p.parent.name}/{p.name.replace('0' * 19, '')}" for p in ledger.files()]


# -- where partitions start ------------------------------------------------------------


def test_each_partition_starts_at_the_offset_stored_with_the_state_not_kafkas() -> None:
    stored = {offset_field(MOVES, 0): 7, offset_field(MOVES, 1): 0}
    committed = [TopicPartition(MOVES, p, 100) for p in range(3)]  # Kafka's: only a hint
    partitions.start_from(stored, None, committed)
    assert where(committed) == [(MOVES, 0, 7), (MOVES, 1, 0), (MOVES, 2, OFFSET_BEGINNING)]


def test_ledger_files_of_batches_that_never_reached_the_store_are_removed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.flush(ledger.stage(rows(0, range(0, 3))))
    ledger.flush(ledger.stage(rows(0, range(3, 6))))  # past the stored offset
    ledger.flush(ledger.stage(rows(1, range(0, 2))))  # a partition with nothing stored
    assert file_names(ledger) == ["partition=0/0-2.parquet", "partition=0/3-5.parquet",
                                  "partition=1/0-1.parquet"]  # fmt: skip
    assigned = [TopicPartition(MOVES, 0), TopicPartition(MOVES, 1)]
    partitions.start_from({offset_field(MOVES, 0): 3}, ledger, assigned)
    assert file_names(ledger) == ["partition=0/0-2.parquet"]
    assert where(assigned) == [(MOVES, 0, 3), (MOVES, 1, OFFSET_BEGINNING)]


# -- Kafka's committed offsets and lag -----------------------------------------------------


def test_the_stored_offsets_are_committed_to_kafka_without_waiting() -> None:
    consumer = _Consumer()
    partitions.commit(consumer, {offset_field(MOVES, 0): 7, offset_field(RESERVATIONS, 3): 2})  # type: ignore[arg-type]
    (committed,) = consumer.commits
    assert where(committed) == [(MOVES, 0, 7), (RESERVATIONS, 3, 2)]
    assert consumer.asynchronous == [True]
    partitions.commit(consumer, {})  # type: ignore[arg-type]
    assert len(consumer.commits) == 1


def test_a_failed_kafka_commit_does_not_stop_the_consumer() -> None:
    consumer = _Consumer()
    consumer.commit_error = KafkaException(KafkaError(KafkaError._TRANSPORT))
    partitions.commit(consumer, {offset_field(MOVES, 0): 7})  # type: ignore[arg-type]


def test_lag_is_the_messages_behind_each_partitions_end() -> None:
    topic = "lag.test-topic"  # the gauge is process-wide: a topic no other test reports
    consumer = _Consumer(high={(topic, 0): 12, (topic, 1): 15})
    offsets = {offset_field(topic, 0): 7, offset_field(topic, 1): 20, offset_field(topic, 2): 3}
    out = partitions.lag(consumer, offsets)  # type: ignore[arg-type]
    # Partition 1's end is cached and behind what was consumed: never negative. Partition
    # 2's end could not be read: left out, the rest still reported.
    assert out == {f"{topic}/0": 5, f"{topic}/1": 0}
    gauge = "atp_consumer_lag_messages"
    assert REGISTRY.get_sample_value(gauge, {"topic": topic, "partition": "0"}) == 5
    assert REGISTRY.get_sample_value(gauge, {"topic": topic, "partition": "1"}) == 0
    assert REGISTRY.get_sample_value(gauge, {"topic": topic, "partition": "2"}) is None


# -- retrying while the store is down -------------------------------------------------


class _Defect(Exception):
    """A bug, not an outage."""


def failing(times: int, error: Exception | None = None) -> tuple[Callable[[], None], list[int]]:
    """A step that fails ``times`` times (StoreDown, or ``error``), then succeeds."""
    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        if len(calls) <= times:
            raise error or StoreDown("the store is unreachable")

    return step, calls


def test_a_step_is_retried_with_partitions_paused_but_polled_until_the_store_is_back() -> None:
    consumer = _Consumer()
    owned = [TopicPartition(MOVES, 0), TopicPartition(MOVES, 1)]
    consumer.assign(owned)
    # Polled while paused: partition 2, assigned meanwhile and not paused, delivers one.
    consumer.delivered = [FakeMessage(MOVES, 2, 42, b"{}", b"x")]
    step, calls = failing(2)
    beats: list[int] = []
    partitions.retrying(step, threading.Event(), consumer, (StoreDown,), lambda: beats.append(1))  # type: ignore[arg-type]
    assert len(calls) == 3  # delayed, never lost
    assert consumer.paused == [(MOVES, 0), (MOVES, 1)] == consumer.resumed
    # Polled each round (the group does not evict us), and the liveness file kept fresh.
    assert consumer.polls == 2 and len(beats) == 2
    assert consumer.seeks == [(MOVES, 2, 42)]  # rewound: delivered again once resumed


def test_an_error_that_is_not_an_outage_is_not_retried() -> None:
    consumer = _Consumer()
    consumer.assign([TopicPartition(MOVES, 0)])
    step, calls = failing(1, _Defect("a defect"))
    with pytest.raises(_Defect):
        partitions.retrying(step, threading.Event(), consumer, (StoreDown,), lambda: None)  # type: ignore[arg-type]
    assert len(calls) == 1 and consumer.paused == []


def test_stopping_during_an_outage_gives_the_step_up() -> None:
    """The batch is neither applied nor committed: the next start consumes it again."""
    consumer = _Consumer()
    consumer.assign([TopicPartition(MOVES, 0)])
    stop = threading.Event()
    step, calls = failing(5)
    partitions.retrying(step, stop, consumer, (StoreDown,), stop.set)  # type: ignore[arg-type]
    assert len(calls) == 1
    already = threading.Event()
    already.set()
    step, calls = failing(5)
    partitions.retrying(step, already, consumer, (StoreDown,), lambda: None)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_a_store_step_in_a_kafka_callback_waits_for_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(partitions, "time", types.SimpleNamespace(sleep=sleeps.append))
    answers: list[Exception | dict[str, int]] = [StoreDown("down") for _ in range(8)]
    answers.append({"t\x1f0": 4})

    def offsets() -> dict[str, int]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert partitions.retrying_plain(offsets, (StoreDown,)) == {"t\x1f0": 4}
    # Backing off, never for more than 5 s at a time.
    assert len(sleeps) == 8 and sleeps == sorted(sleeps) and sleeps[0] > 0 and sleeps[-1] <= 5
    step, calls = failing(1, _Defect("a defect"))
    with pytest.raises(_Defect):
        partitions.retrying_plain(step, (StoreDown,))
    assert len(calls) == 1


def test_a_stop_ends_a_callbacks_wait_for_the_store_at_once() -> None:
    """SIGTERM while Redis is down during a rebalance: the consumer must stop, not wait
    for Redis inside the callback until it is killed (the offsets never moved)."""
    stop = threading.Event()
    calls: list[float] = []

    def offsets() -> dict[str, int]:
        calls.append(time.monotonic())
        if len(calls) == 3:
            threading.Timer(0.05, stop.set).start()  # stopped during the 0.4 s backoff
        raise StoreDown("down")

    started = time.monotonic()
    with pytest.raises(partitions.Stopped):
        partitions.retrying_plain(offsets, (StoreDown,), stop)
    assert len(calls) == 3 and time.monotonic() - started < 0.35 + 0.3
    with pytest.raises(partitions.Stopped):  # already stopped: raised without waiting
        partitions.retrying_plain(offsets, (StoreDown,), stop)


# -- rebalances, in the loop ---------------------------------------------------------------


def message(offset: int, partition: int = 0) -> FakeMessage:
    return FakeMessage(MOVES, partition, offset, receipt_value(offset), b"SKU-1")


def subscribed(store: MemoryStore, ledger: Ledger | None = None) -> tuple[ConsumerLoop, _Consumer]:
    """A loop whose rebalance callbacks are in its consumer: it ran and was stopped at once
    (they are handed over only by ``subscribe``, inside ``run``)."""
    consumer = _Consumer()
    loop = ConsumerLoop(
        consumer, FakeProducer(), store, PROJECTOR, OPTIONS,  # type: ignore[arg-type]
        clock=lambda: NOW, ledger=ledger,
    )  # fmt: skip
    stop = threading.Event()
    stop.set()
    loop.run(stop)
    return loop, consumer


def process(loop: ConsumerLoop, messages: list[FakeMessage], batch: Batch | None = None) -> None:
    loop.process(cast(list[Message], messages), batch)


def dead_letters(loop: ConsumerLoop) -> int:
    return sum(m.topic == "dlq" for m in loop.producer.sent)  # type: ignore[attr-defined]


def on_hand(store: MemoryStore) -> int:
    return int(json.loads(store.documents_of["SKU-1"]["p:web"])["on_hand"])


def test_an_assignment_seeks_each_partition_to_the_offsets_in_the_store() -> None:
    store = MemoryStore()
    loop, consumer = subscribed(store)
    process(loop, [message(n) for n in range(7)] + [message(2, partition=1)])
    given = [TopicPartition(MOVES, p, 100) for p in range(3)]  # as Kafka's commits had it
    consumer.group_assigns(given)
    assert where(consumer.assigned) == [(MOVES, 0, 7), (MOVES, 1, 3), (MOVES, 2, OFFSET_BEGINNING)]


def test_a_batch_consumed_before_partitions_changed_hands_is_not_applied() -> None:
    store = MemoryStore()
    loop, consumer = subscribed(store)
    consumer.group_assigns([TopicPartition(MOVES, 0)])
    process(loop, [message(0)])
    assert loop.written.states  # SKU-1's next events would be folded without a read
    pending = [message(1), FakeMessage(MOVES, 0, 2, b"{not json", b"x"), message(3)]
    batch = loop.decode(cast(list[Message], pending))
    consumer.group_revokes([TopicPartition(MOVES, 0)])
    # Another owner may write SKU-1 from now on: nothing assumed about it is kept.
    assert loop.written.states == {}
    consumer.group_assigns([TopicPartition(MOVES, 0)])
    writes = store.writes
    process(loop, pending, batch)
    assert store.writes == writes and on_hand(store) == 1 and dead_letters(loop) == 0
    # Delivered again from the offset in the store, and applied then.
    assert where(consumer.assigned) == [(MOVES, 0, 1)]
    process(loop, pending)
    assert on_hand(store) == 3 and store.stored_offsets == {offset_field(MOVES, 0): 4}
    assert dead_letters(loop) == 1  # once, not once per delivery


def test_a_revoked_partitions_ledger_rows_are_left_to_its_next_owner(tmp_path: Path) -> None:
    store = MemoryStore()
    ledger = Ledger(tmp_path)
    loop, consumer = subscribed(store, ledger)
    consumer.group_assigns([TopicPartition(MOVES, 0), TopicPartition(MOVES, 1)])
    process(loop, [message(0, partition=0), message(0, partition=1)])
    consumer.group_revokes([TopicPartition(MOVES, 1)])
    loop.flush_ledger()
    assert file_names(ledger) == ["partition=0/0-0.parquet"]
    assert [name.split("\x1f")[1] for name in store.staged] == ["1"]


def test_an_assignment_onto_a_store_that_lost_its_data_does_not_start(tmp_path: Path) -> None:
    """Contract: after a loss of Redis data the consumer stops for `atp rebuild`; it must
    not start the partitions from the beginning of an emptied store's offsets."""
    store = MemoryStore()
    ledger = Ledger(tmp_path)
    loop, consumer = subscribed(store, ledger)
    consumer.group_assigns([TopicPartition(MOVES, 0)])
    process(loop, [message(n) for n in range(3)])
    loop.flush_ledger()
    before = where(consumer.assigned)
    store.__init__()  # type: ignore[misc]  # emptied: no marker, no offsets
    with pytest.raises(LedgerAhead):
        consumer.group_assigns([TopicPartition(MOVES, 0)])
    assert where(consumer.assigned) == before  # nothing assigned from the emptied store
    assert store.initialized is None  # not taken for a new store to fill
    assert file_names(ledger) == ["partition=0/0-2.parquet"]
