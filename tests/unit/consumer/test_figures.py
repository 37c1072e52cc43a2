"""What the consumer tells operators (streams/consumer/figures.py): the snapshot the control
tower and `atp report` read from the store (counters, lag, produce-to-visible latency, dead
letters by reason), the metrics beside it, and the liveness file."""

from __future__ import annotations

import os
import time
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from streams.consumer import figures as figures_module
from streams.consumer.batch import Batch, decode_batch
from streams.consumer.figures import Figures
from streams.consumer.options import Stats
from streams.snapshot import ConsumerSnapshot, decode_snapshot
from tests.fakes import FakeConsumer, FakeMessage, MemoryStore
from tests.unit.consumer.messages import receipt_value

MOVES = "wms.bin-movements"


class _StampedMessage(FakeMessage):
    """A message with a producer timestamp (FakeMessage has none)."""

    def __init__(self, offset: int, value: bytes, produced_ms: int) -> None:
        super().__init__(MOVES, 0, offset, value, b"SKU-1")
        self.produced_ms = produced_ms

    def timestamp(self) -> tuple[int, int]:
        return (1, self.produced_ms)  # TIMESTAMP_CREATE_TIME


class _Watermarks(FakeConsumer):
    """A consumer whose partitions end at ``high`` (FakeConsumer's all end at 0)."""

    def __init__(self, high: dict[tuple[str, int], int]) -> None:
        super().__init__()
        self.high = high

    def get_watermark_offsets(self, tp: Any, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return (0, self.high[tp.topic, tp.partition])


class _Clock:
    """Stands in for the ``time`` module inside figures.py: monotonic time moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    shim = types.SimpleNamespace(monotonic=fake.monotonic, time=fake.time)
    monkeypatch.setattr(figures_module, "time", shim)
    return fake


def decode(messages: list[FakeMessage]) -> Batch:
    return decode_batch(
        messages,  # type: ignore[arg-type]
        max_message_bytes=10_000,
        known_channels=frozenset({"web", "marketplace"}),
        dead_letter_topic="dlq",
        generation=0,
    )


def read(store: MemoryStore, figures: Figures) -> ConsumerSnapshot:
    return decode_snapshot(store.snapshots[figures.book.instance])


def dead_letter_events() -> float:
    labels = {"type": "invalid", "outcome": "dead_letter"}
    return REGISTRY.get_sample_value("atp_events_total", labels) or 0.0


def test_the_snapshot_reports_counters_lag_and_dead_letters_by_reason() -> None:
    store = MemoryStore(initialized="test")
    figures = Figures(store, _Watermarks({(MOVES, 0): 12}), None)  # type: ignore[arg-type]
    messages = [
        FakeMessage(MOVES, 0, 0, receipt_value(0), b"SKU-1"),
        FakeMessage(MOVES, 0, 1, b"{not json", b"x"),
        FakeMessage(MOVES, 0, 2, b"{not json either", b"x"),
        FakeMessage(MOVES, 0, 3, receipt_value(3, quantity=-1), b"SKU-1"),
        FakeMessage(MOVES, 0, 4, receipt_value(4), b"SKU-1"),
    ]
    batch = decode(messages)
    before = dead_letter_events()
    figures.batch_done(messages, batch, 0.01)  # type: ignore[arg-type]
    figures.snapshot(Stats(consumed=5, applied=2, duplicates=1, dead_lettered=3, swept=4))
    snapshot = read(store, figures)
    assert snapshot.lag == {f"{MOVES}/0": 7}  # the partition ends at 12; 5 consumed
    assert (snapshot.consumed, snapshot.applied, snapshot.duplicates) == (5, 2, 1)
    assert (snapshot.dead_lettered, snapshot.swept) == (3, 4)
    # Grouped by the rule broken, not by the offending value.
    by_rule = {reason.split(":")[0]: n for reason, n in snapshot.dead_letters_last_hour.items()}
    assert by_rule == {"not JSON": 2, "invalid event": 1}
    assert dead_letter_events() - before == 3
    assert snapshot.visible_p50_ms is None  # no message carried a timestamp


def test_produce_to_visible_latency_is_measured_from_the_message_timestamps() -> None:
    store = MemoryStore(initialized="test")
    figures = Figures(store, FakeConsumer(), None)  # type: ignore[arg-type]
    produced_ms = int(time.time() * 1000) - 250
    messages = [_StampedMessage(n, receipt_value(n), produced_ms) for n in range(3)]
    figures.batch_done(messages, decode(messages), 0.01)  # type: ignore[arg-type]
    figures.snapshot(Stats())
    snapshot = read(store, figures)
    assert snapshot.visible_p50_ms is not None and snapshot.visible_p99_ms is not None
    assert 250 <= snapshot.visible_p50_ms < 5_000
    assert 250 <= snapshot.visible_p99_ms < 5_000


def test_the_snapshot_is_written_about_once_a_second(clock: _Clock) -> None:
    store = MemoryStore(initialized="test")
    figures = Figures(store, FakeConsumer(), None)  # type: ignore[arg-type]
    figures.snapshot(Stats(consumed=1))
    figures.snapshot(Stats(consumed=2))  # the same second: not written again
    assert read(store, figures).consumed == 1
    clock.now += 1.0
    figures.snapshot(Stats(consumed=3))
    assert read(store, figures).consumed == 3


def test_lag_follows_the_batches(clock: _Clock) -> None:
    store = MemoryStore(initialized="test")
    consumer = _Watermarks({(MOVES, 0): 10})
    figures = Figures(store, consumer, None)  # type: ignore[arg-type]
    first = [FakeMessage(MOVES, 0, n, receipt_value(n), b"SKU-1") for n in range(4)]
    figures.batch_done(first, decode(first), 0.01)  # type: ignore[arg-type]
    figures.snapshot(Stats())
    assert read(store, figures).lag == {f"{MOVES}/0": 6}
    clock.now += 2.0
    consumer.high[MOVES, 0] = 20
    second = [FakeMessage(MOVES, 0, n, receipt_value(n), b"SKU-1") for n in range(4, 18)]
    figures.batch_done(second, decode(second), 0.01)  # type: ignore[arg-type]
    figures.snapshot(Stats())
    assert read(store, figures).lag == {f"{MOVES}/0": 2}


def test_a_partition_handed_over_leaves_this_consumers_lag(clock: _Clock) -> None:
    """The control tower shows the freshest snapshot's lag per partition: one given up must
    not stay there, frozen, beside its new owner's."""
    store = MemoryStore(initialized="test")
    consumer = _Watermarks({(MOVES, 0): 10, (MOVES, 1): 10})
    figures = Figures(store, consumer, None)  # type: ignore[arg-type]
    both = [FakeMessage(MOVES, p, n, receipt_value(n), b"SKU-1") for p in (0, 1) for n in range(4)]
    figures.batch_done(both, decode(both), 0.01)  # type: ignore[arg-type]
    figures.snapshot(Stats())
    assert read(store, figures).lag == {f"{MOVES}/0": 6, f"{MOVES}/1": 6}
    figures.given_up({(MOVES, 1)})
    clock.now += 1.0
    figures.snapshot(Stats())
    assert read(store, figures).lag == {f"{MOVES}/0": 6}


def test_a_store_that_is_down_does_not_stop_the_consumer_for_its_figures(clock: _Clock) -> None:
    store = MemoryStore(initialized="test")
    figures = Figures(store, FakeConsumer(), None)  # type: ignore[arg-type]
    store.down = True
    figures.snapshot(Stats(consumed=1))  # does not raise
    store.down = False
    clock.now += 1.0
    figures.snapshot(Stats(consumed=2))
    assert read(store, figures).consumed == 2


def test_the_liveness_file_is_touched_while_the_loop_runs(tmp_path: Path, clock: _Clock) -> None:
    alive = tmp_path / "alive"
    figures = Figures(MemoryStore(), FakeConsumer(), str(alive))  # type: ignore[arg-type]
    figures.alive()
    assert alive.exists()
    os.utime(alive, (0, 0))  # as if the loop had hung long ago
    clock.now += 1.0
    figures.alive()
    assert alive.stat().st_mtime > time.time() - 60
