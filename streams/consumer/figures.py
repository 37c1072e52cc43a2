"""What the consumer tells people: metrics per batch, lag, the snapshot of its figures that
the control tower reads, and the file the liveness probe checks."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from confluent_kafka import Consumer, Message

from streams import metrics
from streams.consumer import partitions
from streams.consumer.batch import Batch
from streams.consumer.folding import count
from streams.consumer.options import Stats
from streams.snapshot import SnapshotBook, encode_snapshot
from streams.store import Store

VISIBLE_SAMPLE: Final = 500  # messages per batch whose produce-to-visible time is observed


class Figures:
    def __init__(self, store: Store, consumer: Consumer, alive_file: str | None) -> None:
        self.store = store
        self.consumer = consumer
        self.alive_file = alive_file
        self.book = SnapshotBook(instance=f"{socket.gethostname()}:{os.getpid()}")
        self._last = {"alive": 0.0, "lag": 0.0, "snapshot": 0.0}

    def batch_done(self, messages: list[Message], batch: Batch, seconds: float) -> None:
        metrics.FOLD_SECONDS.observe(seconds)
        metrics.BATCH_SIZE.observe(len(messages))
        visible = time.time()
        # A sample of at most VISIBLE_SAMPLE messages, spread over the batch: a histogram
        # observation per message of a 100k batch would cost more than it tells.
        for message in messages[:: -(-len(messages) // VISIBLE_SAMPLE)]:
            kind, stamp = message.timestamp()
            if kind and stamp > 0:
                metrics.VISIBLE_SECONDS.observe(max(0.0, visible - stamp / 1000))
                self.book.visible(max(0.0, visible - stamp / 1000))
        for _, reason in batch.dead_sources:
            self.book.dead_letter(reason)
        if batch.dead_sources:
            metrics.EVENTS.labels("invalid", "dead_letter").inc(len(batch.dead_sources))
        count(batch.events, "consumed")
        if self._due("lag", 2.0):
            self.book.lag.update(partitions.lag(self.consumer, batch.offsets))

    def given_up(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions handed to another consumer: their lag is the new owner's to report
        (the control tower shows the freshest snapshot's, which would be this one's)."""
        for topic, partition in partitions:
            self.book.lag.pop(f"{topic}/{partition}", None)

    def snapshot(self, stats: Stats) -> None:
        """About once a second, the figures for the control tower and `atp report`."""
        if not self._due("snapshot", 1.0):
            return
        s = stats
        snapshot = self.book.snapshot(s.consumed, s.applied, s.duplicates, s.dead_lettered, s.swept)
        try:
            self.store.put_snapshot(self.book.instance, encode_snapshot(snapshot))
        except self.store.transient_errors:  # the loop's own retries handle the store
            pass

    def alive(self) -> None:
        if self.alive_file and self._due("alive", 1.0):
            Path(self.alive_file).touch()

    def _due(self, what: str, every_s: float) -> bool:
        if time.monotonic() - self._last[what] < every_s:
            return False
        self._last[what] = time.monotonic()
        return True
