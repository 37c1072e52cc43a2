"""Step four: the availability events of each write, published, and forgotten once the
broker has all of them.

A write puts its availability events into the store's outbox as one entry, atomically with
the change. After the write this process hands them to the producer from memory; the sweep
also reads the store's outbox, which holds whatever a crashed instance or the API left
(oldest first among those read). The loop does not wait for acknowledgements: until the
broker has every event of an entry, the entry stays in the store, so a crash or a failed
delivery means it is published again (at least once).

Order (contract section 3): the last message per (channel, sku) must carry the current
value. An entry from the store was written before the sweep found it, maybe before values
this process (or another) published since, so it can land after a newer one. Once the
broker acknowledged it, its values are compared with the stored documents, and any that is
no longer current is published again as it is now (checked the same way): whatever order
the messages landed in, the last one for a key carries the current value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Final

import msgspec
from confluent_kafka import KafkaError, Message

from streams import metrics
from streams.backorders import expand_events
from streams.changeset import (
    RESERVATION_KIND,
    STATE_KIND,
    UPDATE_KIND,
    AvailabilityChanged,
    StockStateChanged,
    channel_and_sku,
    decode_outbox,
    outbox_kind,
    reservations_field,
    stock_state,
    stock_state_field,
)
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
STATE_PREFIX: Final = stock_state_field("", "")[:3]
RESERVATIONS_PREFIX: Final = reservations_field("")
RESEND: Final = "resend-"  # the prefix of values sent again (they are in no store)
_encode: Final = msgspec.json.Encoder().encode


class OutboxPublisher:
    def __init__(
        self,
        store: Store,
        producer: ReliableProducer,
        topic: str,
        reservations_topic: str = "",
        updates_topic: str = "",
        stock_states_topic: str = "",
        low_stock: Mapping[str, int] | None = None,
    ) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        # By outbox entry kind (streams.changeset.outbox_kind): where its messages go.
        self.topics = {
            "": topic,
            RESERVATION_KIND: reservations_topic,
            UPDATE_KIND: updates_topic,
            STATE_KIND: stock_states_topic,
        }
        self.low_stock = dict(low_stock or {})  # channel -> low_stock_threshold
        # Written to the store, not yet handed to the producer: outbox id -> events.
        self.pending: dict[str, dict[str, bytes]] = {}
        self._check: set[str] = set()  # of those, the ones to check once acknowledged
        self._in_flight: dict[str, _Sending] = {}
        # Acknowledged by the broker: entries to delete from the store, events to count.
        self._done: list[str] = []
        self._published = 0
        # Acknowledged entries whose values are checked against the store before they are
        # deleted from it (so a crash before the check leaves them to be published again).
        self._to_check: dict[str, dict[str, bytes]] = {}
        # Re-sends (in no store) -> the store entries they stand for.
        self._origins: dict[str, list[str]] = {}
        self._resends = 0

    def add(self, outbox_id: str, events: dict[str, bytes], check: bool = False) -> None:
        """A write that landed: publish its events with the next ``publish``; with
        ``check``, compare them with the store once acknowledged (see the module's doc)."""
        if events:
            self.pending[outbox_id] = events
            if check:
                self._check.add(outbox_id)

    def publish(self, from_store: bool = False) -> int:
        """Hand the waiting events to the producer (with ``from_store``, also the store's
        outbox, checked once acknowledged); returns how many events the broker acknowledged
        since the last call."""
        published = self.ack_delivered()
        if from_store:
            waiting = {*self._to_check, *self._done}
            waiting.update(o for standing in self._origins.values() for o in standing)
            for outbox_id, blob in self.store.outbox(limit=READ_LIMIT).items():
                if outbox_id not in self._in_flight and outbox_id not in waiting:
                    self.pending.setdefault(outbox_id, dict(decode_outbox(blob)))
                    self._check.add(outbox_id)
        pending, self.pending = self.pending, {}
        for outbox_id, events in pending.items():
            self._produce(outbox_id, events, outbox_id in self._check)
        self._check.clear()
        self._republish_stale()
        return published

    def ack_delivered(self) -> int:
        """Remove from the store the entries the broker has every event of (and whose check
        passed); returns how many events were acknowledged."""
        self.producer.producer.poll(0)
        if self._done:
            done, self._done = self._done, []
            stored = [outbox_id for outbox_id in done if not outbox_id.startswith(RESEND)]
            try:
                if stored:
                    self.store.ack_outbox(stored)
            except BaseException:
                self._done = done + self._done  # deleted with the next call
                raise
        published, self._published = self._published, 0
        metrics.PUBLISHED.inc(published)
        return published

    def finish(self, timeout_s: float = 10.0) -> int:
        """On shutdown: wait for outstanding deliveries, check what needs it, and clear what
        was acknowledged; what is left stays in the store and is published again."""
        deadline = time.monotonic() + timeout_s
        published = 0
        try:
            while True:
                self.producer.producer.flush(max(0.0, deadline - time.monotonic()))
                self._republish_stale()
                published += self.ack_delivered()
                if not (self._in_flight or self._to_check) or time.monotonic() > deadline:
                    return published
        except self.store.transient_errors as exc:
            log.warning("could not clear the outbox on shutdown: %s", exc)
            return published

    def _produce(self, outbox_id: str, events: dict[str, bytes], check: bool) -> None:
        if outbox_id in self._in_flight:
            return
        # Orders' updates carry each order's result as it is now: read together.
        orders = self.store.order_results(
            [key for name in events for kind, key in [outbox_kind(name)] if kind == UPDATE_KIND]
        )
        ready: list[tuple[str, bytes, bytes]] = []
        for name, value in events.items():
            if name.startswith(RESERVATIONS_PREFIX):  # a sku's re-plan events
                sku = name[len(RESERVATIONS_PREFIX) :]
                topic, key = self.topics[RESERVATION_KIND], sku.encode()
                ready += [(topic, key, event) for event in expand_events(sku, value)]
            elif (message := self._message(name, value, orders)) is not None:
                ready.append(message)
        if not ready:
            self._done.append(outbox_id)
            return
        self._in_flight[outbox_id] = _Sending(events, len(ready), len(ready), check)
        on_delivery = partial(self._delivered, outbox_id)
        producer = self.producer.producer
        for topic, key, value in ready:
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)

    def _message(
        self, name: str, value: bytes, orders: dict[str, bytes]
    ) -> tuple[str, bytes, bytes] | None:
        """(topic, key, value) of an outbox event; None for an order update whose order is
        gone (it was never acknowledged: its allocation was undone)."""
        kind, key = outbox_kind(name)
        if kind == UPDATE_KIND:
            # The order's result as it is now, with why it changed (contract section 9).
            result = orders.get(key)
            if result is None:
                return None
            value = result[:-1] + b"," + value[1:]
        return self.topics[kind], key.encode(), value

    def _delivered(self, outbox_id: str, err: KafkaError | None, _msg: Message) -> None:
        sending = self._in_flight[outbox_id]
        if err is not None and not sending.failed:
            sending.failed = True
            log.warning(
                "availability events of write %s not delivered (%s); they are sent again",
                outbox_id,
                err,
            )
        sending.outstanding -= 1
        if sending.outstanding:
            return
        del self._in_flight[outbox_id]
        if sending.failed:
            if outbox_id.startswith(RESEND):
                # In no store, so no sweep sends it again: send it with the next batch.
                self.pending[outbox_id] = sending.events
                self._check.add(outbox_id)
            return  # a store entry stays there: the sweep publishes it again
        self._published += sending.messages
        if sending.check:
            self._to_check[outbox_id] = sending.events
        else:
            self._done.append(outbox_id)

    def _republish_stale(self) -> None:
        """Compare the acknowledged values that need it with the store; an entry whose values
        are all current is done, and the stale ones are sent again as they are now (checked
        in turn), standing for the entries they came from until their own check passes."""
        if not self._to_check:
            return
        names = {
            name
            for events in self._to_check.values()
            for name in events
            # Availability and stock states; the other kinds are never stale.
            if outbox_kind(name)[0] in ("", STATE_KIND)
        }
        pairs = {name: channel_and_sku(name) for name in names}
        documents = self.store.documents(list(pairs.values()))  # before anything is dropped
        checking, self._to_check = self._to_check, {}
        stale: dict[str, bytes] = {}
        origins: list[str] = []
        for outbox_id, events in checking.items():
            found = {
                name: now
                for name, value in events.items()
                if name in pairs
                and (now := self._stale(name, value, documents.get(pairs[name]), pairs[name]))
                is not None
            }
            standing_for = self._origins.pop(outbox_id, [outbox_id])
            if found:
                stale.update(found)
                origins += standing_for
            else:
                self._done += standing_for
                if outbox_id.startswith(RESEND):
                    self._done.append(outbox_id)
        if stale:
            self._resends += 1
            resend = f"{RESEND}{self._resends}"
            self._origins[resend] = [o for o in origins if not o.startswith(RESEND)]
            self._produce(resend, stale, check=True)
            metrics.REPUBLISHED.inc(len(stale))

    def _stale(
        self, name: str, published: bytes, stored: bytes | None, pair: tuple[str, str]
    ) -> bytes | None:
        if name.startswith(STATE_PREFIX):
            return _stale_state(published, stored, pair, self.low_stock.get(pair[0], 0))
        return _stale(published, stored, pair)


@dataclass
class _Sending:
    events: dict[str, bytes]
    messages: int
    outstanding: int
    check: bool
    failed: bool = False


class _State(msgspec.Struct):
    state: str


_state: Final = msgspec.json.Decoder(_State)


def _stale_state(
    published: bytes, stored: bytes | None, pair: tuple[str, str], threshold: int
) -> bytes | None:
    """The stock state event to send again when ``published`` is no longer the state of
    the stored value (contract section 12, with section 3's ordering)."""
    sent = _state.decode(published).state
    current = _value.decode(stored) if stored is not None else _Value(0, format_as_of(now_us()))
    state = stock_state(current.available_to_sell, threshold)
    if state == sent:
        return None
    channel, sku = pair
    return _encode(
        StockStateChanged(channel, sku, state, sent, current.available_to_sell, current.as_of)
    )


def _stale(published: bytes, stored: bytes | None, pair: tuple[str, str]) -> bytes | None:
    """The event to send again when ``published`` is no longer the stored value."""
    value = _value.decode(published).available_to_sell
    if stored is None:  # never seen: reads 0
        if value == 0:
            return None
        return _encode(AvailabilityChanged(pair[0], pair[1], 0, format_as_of(now_us())))
    current = _value.decode(stored)
    if current.available_to_sell == value:
        return None
    return _encode(AvailabilityChanged(pair[0], pair[1], current.available_to_sell, current.as_of))
