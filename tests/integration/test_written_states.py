"""The consumer folds skus it wrote last without reading them again, and folds the next
batch while a write is in flight. Against a real Redis: every assumption that makes is
checked by the write, and a wrong one costs a retry, never a lost or doubled event.
"""

from __future__ import annotations

import json

import msgspec
import pytest
from confluent_kafka import TopicPartition

from atp_service.orders import created_event_id
from atp_service.store import keys
from streams.changeset import build_changeset, projection_field
from streams.consumer import ConsumerLoop
from streams.state import BinStock, SkuState, dump_state
from tests.fakes import FakeMessage
from tests.integration.inprocess import TOPIC, QueueConsumer, batch, on_hand, receipt, stored_offset

pytestmark = pytest.mark.integration


def document(stream: ConsumerLoop) -> dict[str, int]:
    raw = stream.store.client.hget(keys.SINGLE.sku_key("SKU-1"), projection_field("web"))
    return json.loads(raw) if raw else {}


def message(offset: int, value: bytes) -> FakeMessage:
    return FakeMessage(TOPIC, 0, offset, value, b"SKU-1")


def api_reservation(reservation_id: str, quantity: int) -> bytes:
    return json.dumps({
        "type": "reservation_created", "event_id": created_event_id(reservation_id),
        "occurred_at": "2026-11-27T08:00:00Z", "sku": "SKU-1", "reservation_id": reservation_id,
        "channel": "web", "location": "DC-EAST", "quantity": quantity,
    }).encode()  # fmt: skip


def test_a_sku_another_writer_changed_is_read_again(stream: ConsumerLoop) -> None:
    stream.process(batch(0, 3))
    assert "SKU-1" in stream.written.states
    # As the API's safety-stock override does: read, change, write with the version.
    snapshot = stream.store.read(["SKU-1"])
    state = msgspec.structs.replace(snapshot.states["SKU-1"], safety_stock={"web": 1})
    now = stream.clock()
    assert not stream.store.write(
        build_changeset([state], snapshot.versions, stream.projector, now), now // 1000
    )
    stream.process(batch(3, 2))
    assert stream.stats.conflicts == 1  # folded on what it wrote, refused, read, folded again
    assert on_hand(stream) == 5 and document(stream)["safety_stock"] == 1
    assert stream.stats.applied == 5


def test_an_event_applied_before_is_a_duplicate_though_its_sku_was_not_read(
    stream: ConsumerLoop,
) -> None:
    stream.process(batch(0, 3))
    stream.process([message(3, receipt(1))])  # e-1 again, at a new offset
    assert on_hand(stream) == 3 and stored_offset(stream) == 4
    assert (
        stream.stats.duplicates == 1 and stream.stats.applied == 3 and stream.stats.conflicts == 1
    )


def test_the_apis_own_reservations_are_taken_as_applied_and_that_is_checked(
    stream: ConsumerLoop,
) -> None:
    stream.process(batch(0, 5))
    # R-1 as the API applies it: its event_id marked with the sku's write.
    snapshot = stream.store.read(["SKU-1"])
    now = stream.clock()
    changes = build_changeset(
        [snapshot.states["SKU-1"]], snapshot.versions, stream.projector, now,
        seen={"SKU-1": [created_event_id("R-1")]},
    )  # fmt: skip
    # Marked now: a mark from long ago would be trimmed, as the dedupe window says.
    assert not stream.store.write(changes, now // 1000)
    stream.written.states.clear()
    stream.process(batch(5, 1))  # read once, so written again from what it wrote
    stream.process([message(6, api_reservation("R-1", 2))])
    assert stream.stats.duplicates == 1 and stream.stats.conflicts == 0
    assert document(stream)["reserved"] == 0
    # An event with the API's prefix that the API never wrote is not ignored.
    stream.process([message(7, api_reservation("R-2", 2))])
    assert stream.stats.conflicts == 1 and document(stream)["reserved"] == 2
    assert stored_offset(stream) == 8


def test_a_replaced_server_drops_every_assumption(stream: ConsumerLoop) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    stream.on_assign(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    stream.process(batch(0, 3))
    # As after a failover to a replica that holds other data under the same version.
    other = SkuState("SKU-1", bins=(BinStock("DC-EAST", "A1", "available", 10),))
    stream.store.client.hset(keys.SINGLE.sku_key("SKU-1"), "s", dump_state(other))
    real = stream.written.server
    stream.written.server = (
        "f" * 40
    )  # the run_id the consumer saw before (a new server has another)
    stream.process(batch(3, 2))
    # Nothing written; the partition is consumed again from the offset the server holds.
    assert consumer.seeks == [(TOPIC, 0, 3)] and stream.stats.applied == 3
    stream.process(batch(3, 2))
    assert on_hand(stream) == 12 and stored_offset(stream) == 5 and stream.written.server == real


def test_a_write_the_replaced_server_lost_is_applied_again(stream: ConsumerLoop) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    stream.on_assign(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    client = stream.store.client
    stream.process(batch(0, 3))
    saved = {key: client.dump(key) for key in client.keys("*")}
    stream.process(batch(3, 2))
    # As after a restart from a snapshot taken before the last write (AOF every second).
    client.flushall()
    for key, value in saved.items():
        client.restore(key, 0, value)
    stream.written.server = "f" * 40
    stream.process(batch(5, 1))
    assert consumer.seeks == [(TOPIC, 0, 3)] and on_hand(stream) == 3
    stream.process(batch(3, 3))  # consumed again from there
    assert on_hand(stream) == 6 and stored_offset(stream) == 6


def test_the_batch_folded_during_a_write_is_used_when_the_write_lands(
    stream: ConsumerLoop,
) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    stream.process(batch(0, 3))
    consumer.batches = [batch(4, 2)]
    stream.process([message(3, receipt(3))], read_ahead=True)
    assert stream.folded_ahead
    ahead = stream.take_ahead()
    assert ahead is not None
    messages, decoded = ahead
    stream.process(messages, decoded, read_ahead=True)
    assert stream.stats.prepared == 1 and stream.stats.conflicts == 0
    assert on_hand(stream) == 6 and stored_offset(stream) == 6 and stream.stats.applied == 6


def test_the_batch_folded_during_a_write_that_conflicts_is_folded_again(
    stream: ConsumerLoop,
) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    stream.process(batch(0, 3))
    consumer.batches = [batch(4, 2)]
    stream.store.conflict_next = True  # type: ignore[attr-defined]
    stream.process([message(3, receipt(3))], read_ahead=True)
    ahead = stream.take_ahead()
    assert ahead is not None
    messages, decoded = ahead
    stream.process(messages, decoded, read_ahead=True)
    # Folded on states that did not land then: not used, and nothing counted twice.
    assert stream.stats.prepared == 0
    assert on_hand(stream) == 6 and stored_offset(stream) == 6 and stream.stats.applied == 6


def test_a_failed_read_while_folding_ahead_leaves_the_batch_to_its_turn(
    stream: ConsumerLoop,
) -> None:
    consumer: QueueConsumer = stream.consumer  # type: ignore[assignment]
    stream.process(batch(0, 3))
    other = receipt(3).replace(b'"SKU-1"', b'"SKU-2"')  # a sku not written yet: read ahead
    consumer.batches = [[FakeMessage(TOPIC, 0, 4, other, b"SKU-2")]]
    stream.store.fail_reads = 1  # type: ignore[attr-defined]
    stream.process([message(3, receipt(4))], read_ahead=True)  # no ReadAheadFailed
    assert not stream.folded_ahead
    ahead = stream.take_ahead()
    assert ahead is not None
    messages, decoded = ahead
    stream.process(messages, decoded, read_ahead=True)
    assert on_hand(stream) == 4 and stored_offset(stream) == 5 and stream.stats.applied == 5
