"""Step four: the availability events of each write, published, and forgotten once the
broker has all of them.

A write puts its availability events into the store's outbox as one entry, atomically with
the change. After the write this process hands them to the producer from memory; the sweep
also reads the store's outbox, which holds whatever a crashed instance or the API left
(oldest first). The loop does not wait for acknowledgements: until the broker has every
event of an entry, the entry stays in the store, so a crash or a failed delivery means it
is published again (at least once).

Order (contract section 3): the last message per (channel, sku) must carry the current
value. An entry from the store was written before the sweep found it, maybe before values
this process (or another) published since, so it can land after a newer one. Once the
broker acknowledged it, its values are compared with the stored documents, and any that is
no longer current is published again as it is now (checked the same way): whatever order
the messages landed in, the last one for a key carries the current value.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Final

import msgspec
from confluent_kafka import KafkaError, Message

from streams import metrics
from streams.changeset import AvailabilityChanged, decode_outbox
from streams.consumer.options import now_us
from streams.kafka import ReliableProducer
from streams.projector import format_as_of
from streams.store import Store

log = logging.getLogger(__name__)

READ_LIMIT: Final = 200  # outbox entries read from the store per sweep


class _Value(msgspec.Struct):
    available_to_sell: int
    as_of: str = ""


_value: Final = msgspec.json.Decoder(_Value)
RECHECK: Final = "recheck-"  # the prefix of republished entries (they are in no store)
_encode: Final = msgspec.json.Encoder().encode


def _pair(name: str) -> tuple[str, str]:
    channel, sku = name.split("\x1f", 1)
    return channel, sku


class OutboxPublisher:
    def __init__(self, store: Store, producer: ReliableProducer, topic: str) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        # Written to the store, not yet handed to the producer: outbox id -> events.
        self.pending: dict[str, dict[str, bytes]] = {}
        self._in_flight: dict[str, list[int]] = {}  # outbox id -> [outstanding, events]
        self._failed: set[str] = set()
        self._acked: list[tuple[str, int]] = []  # (outbox id, events) the broker has, all
        # Entries to check once acknowledged (from the store, or republished), and the
        # events of those acknowledged and not checked yet.
        self._checked: dict[str, dict[str, bytes]] = {}
        self._to_check: dict[str, bytes] = {}
        self._republished = 0

    def add(self, outbox_id: str, events: dict[str, bytes]) -> None:
        """A write that landed: publish its events with the next ``publish``."""
        if events:
            self.pending[outbox_id] = events

    def publish(self, from_store: bool = False) -> int:
        """Hand the waiting events to the producer (with ``from_store``, also the store's
        outbox); returns how many events the broker acknowledged since the last call."""
        published = self.ack_delivered()
        pending: dict[str, dict[str, bytes]] = {}
        if from_store:
            done = {outbox_id for outbox_id, _ in self._acked}
            for outbox_id, blob in self.store.outbox(limit=READ_LIMIT).items():
                if outbox_id not in self._in_flight and outbox_id not in done:
                    pending[outbox_id] = events = dict(decode_outbox(blob))
                    self._checked[outbox_id] = events
        pending.update(self.pending)
        self.pending = {}
        for outbox_id, events in pending.items():
            self._produce(outbox_id, events)
        self._republish_stale()
        return published

    def _produce(self, outbox_id: str, events: dict[str, bytes]) -> None:
        if outbox_id in self._in_flight:
            return
        if not events:
            self._acked.append((outbox_id, 0))
            return
        self._in_flight[outbox_id] = [len(events), len(events)]
        on_delivery = partial(self._delivered, outbox_id)
        producer = self.producer.producer
        for name, value in events.items():
            key = name.split("\x1f", 1)[1].encode()
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)

    def _republish_stale(self) -> None:
        """Publish again, as they are now, the values acknowledged that are no longer
        current; those are checked in turn once acknowledged."""
        if not self._to_check:
            return
        sent, self._to_check = self._to_check, {}
        pairs = [_pair(name) for name in sent]
        documents = self.store.documents(pairs)
        stale: dict[str, bytes] = {}
        for name, pair in zip(sent, pairs, strict=True):
            published = _value.decode(sent[name]).available_to_sell
            stored = documents.get(pair)
            current = _value.decode(stored) if stored is not None else None
            if current is None:
                if published != 0:  # never seen reads 0
                    stale[name] = _encode(
                        AvailabilityChanged(pair[0], pair[1], 0, format_as_of(now_us()))
                    )
            elif current.available_to_sell != published:
                stale[name] = _encode(
                    AvailabilityChanged(pair[0], pair[1], current.available_to_sell, current.as_of)
                )
        if stale:
            self._republished += 1
            outbox_id = f"{RECHECK}{self._republished}"
            self._checked[outbox_id] = stale
            self._produce(outbox_id, stale)
            metrics.REPUBLISHED.inc(len(stale))

    def ack_delivered(self) -> int:
        """Remove from the store the entries the broker has every event of; returns how
        many events those were."""
        self.producer.producer.poll(0)
        if not self._acked:
            return 0
        acked, self._acked = self._acked, []
        self.store.ack_outbox([outbox_id for outbox_id, _ in acked])
        published = sum(n for _, n in acked)
        metrics.PUBLISHED.inc(published)
        return published

    def finish(self, timeout_s: float = 10.0) -> int:
        """On shutdown: wait for outstanding deliveries and clear what was acknowledged."""
        self.producer.producer.flush(timeout_s)
        try:
            return self.ack_delivered()
        except self.store.transient_errors as exc:  # the entries stay: published again
            log.warning("could not clear the outbox on shutdown: %s", exc)
            return 0

    def _delivered(self, outbox_id: str, err: KafkaError | None, _msg: Message) -> None:
        if err is not None and outbox_id not in self._failed:
            self._failed.add(outbox_id)
            log.warning(
                "availability events of write %s not delivered (%s); they stay in the outbox",
                outbox_id,
                err,
            )
        counts = self._in_flight[outbox_id]
        counts[0] -= 1
        if counts[0]:
            return
        del self._in_flight[outbox_id]
        checked = self._checked.pop(outbox_id, None)
        if outbox_id in self._failed:
            self._failed.discard(outbox_id)  # still in the store: the sweep publishes it again
            if checked is not None and outbox_id.startswith(RECHECK):
                # Not in the store, so no sweep sends it again: send it with the next batch.
                self.pending[outbox_id] = checked
                self._checked[outbox_id] = checked
        else:
            self._acked.append((outbox_id, counts[1]))
            if checked is not None:
                self._to_check.update(checked)
