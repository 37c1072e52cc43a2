"""The consumer's steps one by one, against the in-memory store (tests/fakes.py): decoding a
batch, folding it, the states kept from the last write, the outbox, and the loop that runs
them. The same rules run against a real Redis in tests/integration and tests/faults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import TopicPartition

from atp_service.config import parse_config
from atp_service.model import projector_for
from streams.changeset import ChangeSet, decode_outbox, order_update_field, reservation_field
from streams.consumer import ConsumerLoop, LedgerAhead
from streams.consumer.batch import decode_batch, ledger_rows
from streams.consumer.folding import Folder, Unfoldable, events_by_sku
from streams.consumer.options import ConsumerOptions, offset_field
from streams.consumer.outbox import OutboxPublisher
from streams.consumer.written import WrittenStates
from streams.ledger import Ledger, staged_rows
from tests.conftest import config_text
from tests.fakes import FakeConsumer, FakeMessage, FakeProducer, MemoryStore, StoreDown
from tests.unit.consumer.messages import receipt

SETTINGS = parse_config(config_text())
PROJECTOR = projector_for(SETTINGS)
MOVES = "wms.bin-movements"
RESERVATIONS = "oms.reservations"
NOW = 1_796_000_000_000_000
WINDOW = 7 * 86_400_000_000
OPTIONS = ConsumerOptions(
    topics=(MOVES, RESERVATIONS), dead_letter_topic="dlq", availability_topic="availability",
    reservations_topic="oms.reservations",
    allocation_updates_topic="atp.allocation-updates",
    stock_states_topic="atp.stock-states",
    known_channels=frozenset(c.name for c in SETTINGS.channels), batch_size=100,
    batch_timeout_s=0.01, sweep_interval_s=60, window_us=WINDOW, max_message_bytes=10_000,
)  # fmt: skip


def message(
    offset: int, body: dict[str, Any] | bytes, topic: str = MOVES, partition: int = 0
) -> FakeMessage:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    sku = body.get("sku", "x") if isinstance(body, dict) else "x"
    return FakeMessage(topic, partition, offset, value, str(sku).encode())


def decode(messages: list[FakeMessage]) -> Any:
    return decode_batch(
        messages,  # type: ignore[arg-type]
        max_message_bytes=OPTIONS.max_message_bytes,
        known_channels=OPTIONS.known_channels,
        dead_letter_topic="dlq",
        generation=0,
    )


# -- decode ------------------------------------------------------------------------------


def test_a_batch_keeps_good_events_and_dead_letters_the_rest_with_their_source() -> None:
    batch = decode([
        message(0, receipt(0)),
        message(1, b"{not json"),
        message(2, receipt(2), partition=1),
        message(3, receipt(3, quantity=-1)),
        message(4, receipt(4, padding="x" * 20_000)),
    ])  # fmt: skip
    assert [e.event_id for e in batch.events] == ["e-0", "e-2"]
    assert batch.offsets == {offset_field(MOVES, 0): 5, offset_field(MOVES, 1): 3}
    reasons = [reason for _, reason in batch.dead_sources]
    assert "not JSON" in reasons[0] and "quantity" in reasons[1] and "limit" in reasons[2]
    headers = dict(batch.dead[0].headers)
    assert batch.dead[0].topic == "dlq" and batch.dead[0].value == b"{not json"
    assert headers["atp-source-topic"] == MOVES.encode() and headers["atp-source-offset"] == b"1"
    assert batch.size == 5


def test_a_message_at_the_size_limit_is_applied_one_byte_over_is_dead_lettered() -> None:
    def padded(n: int, size: int) -> bytes:
        body = json.dumps(receipt(n, padding="")).encode()
        return body.replace(b'"padding": ""', b'"padding": "' + b"x" * (size - len(body)) + b'"')

    limit = OPTIONS.max_message_bytes
    at, over = padded(0, limit), padded(1, limit + 1)
    assert (len(at), len(over)) == (limit, limit + 1)
    batch = decode([message(0, at), message(1, over)])
    assert [e.event_id for e in batch.events] == ["e-0"]
    assert [str(limit + 1) in reason for _, reason in batch.dead_sources] == [True]
    assert batch.dead[0].value == over


def test_ledger_rows_cover_every_message_in_order_with_their_status() -> None:
    api_event = receipt(1) | {"event_id": "atp-alloc:O:1:DC-EAST"}
    batch = decode([message(0, receipt(0)), message(1, api_event), message(2, b"[]")])
    rows = ledger_rows(batch, duplicates=[batch.events[0]])
    assert rows.status == ["duplicate", "applied_by_api", "dead_letter"]
    assert rows.reason[:2] == [None, None] and "object" in str(rows.reason[2])


# -- fold --------------------------------------------------------------------------------


def test_the_fold_step_writes_states_offsets_marks_and_the_events_out() -> None:
    batch = decode([message(0, receipt(0, quantity=4)), message(1, receipt(1, sku="SKU-2"))])
    by_sku = events_by_sku(batch.events)
    known = ({}, {}, set(), {}, {})
    result, changes = Folder(PROJECTOR, WINDOW).fold(
        batch.events, by_sku, batch.offsets, known, NOW, "srv"
    )
    assert [w.sku for w in changes.skus] == ["SKU-1", "SKU-2"]
    assert [w.seen for w in changes.skus] == [["e-0"], ["e-1"]]
    assert changes.offsets == {offset_field(MOVES, 0): 2} and changes.assumed_server == "srv"
    web = msgspec.json.decode(changes.outbox["web\x1fSKU-1"])
    assert web["available_to_sell"] == 4 and len(result.applied) == 2


def test_an_event_already_applied_is_not_marked_again() -> None:
    batch = decode([message(0, receipt(0)), message(1, receipt(1))])
    known = ({}, {}, {"e-0"}, {}, {})
    result, changes = Folder(PROJECTOR, WINDOW).fold(
        batch.events, events_by_sku(batch.events), batch.offsets, known, NOW, ""
    )
    assert [e.event_id for e in result.duplicates] == ["e-0"]
    assert changes.skus[0].seen == ["e-1"]


def test_events_a_write_cut_short_applied_are_applied_in_the_ledger_once(tmp_path: Path) -> None:
    # e-0 was applied by the first steps of a write that never finished (no ledger row
    # landed), which ended at offset 3; e-1 is new. Offset 2 repeats e-0 within that write,
    # offset 3 after it: both are true duplicates.
    messages = [message(0, receipt(0)), message(1, receipt(1))]
    batch = decode([*messages, message(2, receipt(0)), message(3, receipt(0))])
    known = ({}, {}, {"e-0"}, {}, {"e-0": {offset_field(MOVES, 0): 3}})
    _, changes = Folder(PROJECTOR, WINDOW, Ledger(tmp_path)).fold(
        batch.events, events_by_sku(batch.events), batch.offsets, known, NOW, "", batch
    )
    ((name, blob),) = changes.ledger[0].items()
    rows = staged_rows(name, blob).to_pydict()
    assert rows["source_offset"] == [0, 1, 2, 3]
    assert rows["status"] == ["applied", "applied", "duplicate", "duplicate"]
    # Later, the write's key still there: e-0 again is a true duplicate.
    later = decode([message(3, receipt(0))])
    _, changes = Folder(PROJECTOR, WINDOW, Ledger(tmp_path)).fold(
        later.events, events_by_sku(later.events), later.offsets, known, NOW, "", later
    )
    ((name, blob),) = changes.ledger[0].items()
    assert staged_rows(name, blob).to_pydict()["status"] == ["duplicate"]


def test_a_fold_that_raises_names_the_events_that_cause_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams import fold as fold_module
    from streams.events import BinMovement

    real = fold_module._APPLY[BinMovement]

    def broken(work: Any, event: BinMovement, now_us: int) -> None:
        if event.event_id == "e-1":
            raise ValueError("a defect")
        real(work, event, now_us)

    monkeypatch.setitem(fold_module._APPLY, BinMovement, broken)
    batch = decode([message(n, receipt(n)) for n in range(3)])
    with pytest.raises(Unfoldable) as raised:
        Folder(PROJECTOR, WINDOW).fold(
            batch.events,
            events_by_sku(batch.events),
            batch.offsets,
            ({}, {}, set(), {}, {}),
            NOW,
            "",
        )
    assert list(raised.value.culprits) == [1]
    assert isinstance(raised.value.culprits[1], ValueError)


# -- the states written last ---------------------------------------------------------------


def test_kept_states_are_not_read_again_but_the_api_events_are_checked() -> None:
    store = MemoryStore(initialized="test")
    written = WrittenStates(store)
    assert written.known({"SKU-1": ["e-0"]}, {})[1] == {"SKU-1": 0}
    assert written.server == "memory-1"
    written.remember({"SKU-1": (3, b"")})
    store.down = True  # nothing is read for a kept sku
    _, versions, seen, marked, _ = written.known({"SKU-1": ["e-1", "atp-alloc:X"]}, {})
    assert versions == {"SKU-1": 3} and seen == {"atp-alloc:X"}
    assert marked == {"SKU-1": ["atp-alloc:X"]}
    written.conflicted(["SKU-1"])
    assert "SKU-1" not in written.states
    epoch = written.epoch
    written.forget()
    assert written.server == "" and written.epoch == epoch + 1


def test_kept_states_are_dropped_whole_past_the_limit() -> None:
    written = WrittenStates(MemoryStore(), limit=2)
    written.remember({"A": (1, b""), "B": (1, b"")})
    written.remember({"C": (1, b"")})
    assert list(written.states) == ["C"]


# -- the outbox --------------------------------------------------------------------------


def event(channel: str, value: int) -> bytes:
    body = {"channel": channel, "sku": "SKU-1", "available_to_sell": value, "as_of": "t"}
    return msgspec.json.encode(body)


def stored(store: MemoryStore, channel: str, value: int) -> None:
    """The read document of (channel, SKU-1) as a write would leave it."""
    doc = {"channel": channel, "sku": "SKU-1", "available_to_sell": value, "as_of": "now"}
    store.documents_of.setdefault("SKU-1", {})[f"p:{channel}"] = msgspec.json.encode(doc)


def published(producer: FakeProducer) -> list[tuple[str, int]]:
    values = [msgspec.json.decode(m.value) for m in producer.sent]
    return [(v["channel"], v["available_to_sell"]) for v in values]


def test_an_outbox_entry_leaves_the_store_once_every_event_is_acknowledged() -> None:
    store = MemoryStore(initialized="test")
    producer = FakeProducer()
    outbox = OutboxPublisher(store, producer, "availability")  # type: ignore[arg-type]
    stored(store, "web", 1)
    stored(store, "b2b", 2)
    events = {"web\x1fSKU-1": event("web", 1), "b2b\x1fSKU-1": event("b2b", 2)}
    store.write(ChangeSet(offsets={"t\x1f0": 1}, outbox=events, outbox_id="w1"), 0)
    assert outbox.publish(from_store=True) == 0  # handed over, not acknowledged yet
    assert [(m.topic, m.key) for m in producer.sent] == [("availability", b"SKU-1")] * 2
    assert "w1" in store.outbox_entries
    assert outbox.publish() == 2  # the fake broker acknowledged both; both still current
    assert "w1" in store.outbox_entries  # checked; deleted with the next call
    outbox.publish()
    assert store.outbox_entries == {}
    assert outbox.publish(from_store=True) == 0 and len(producer.sent) == 2


def test_outbox_entries_of_a_replan_go_to_their_own_topics() -> None:
    """A re-plan's write queues reservation events and order notices beside availability
    events (streams/backorders.py): each goes to its topic, keyed by sku or order_id, and
    a notice carries the order's result as the store holds it when it is sent."""
    store = MemoryStore(initialized="test")
    producer = FakeProducer()
    outbox = OutboxPublisher(store, producer, "availability", "reservations", "updates")  # type: ignore[arg-type]
    stored(store, "web", 1)
    store.orders["O-1"] = b'{"order_id":"O-1","status":"allocated","lines":[]}'
    released = b'{"type":"reservation_released","reservation_id":"O-1:1:L:backorder"}'
    events = {
        "web\x1fSKU-1": event("web", 1),
        reservation_field("SKU-1", "atp-release:O-1:1:L:backorder"): released,
        order_update_field("O-1"): b'{"reason":"confirmed","as_of":"t"}',
        order_update_field("GONE"): b'{"reason":"confirmed","as_of":"t"}',  # undone since
    }
    store.write(ChangeSet(offsets={"t\x1f0": 1}, outbox=events, outbox_id="w1"), 0)
    outbox.publish(from_store=True)
    sent = {(m.topic, m.key): m.value for m in producer.sent}
    assert set(sent) == {
        ("availability", b"SKU-1"), ("reservations", b"SKU-1"), ("updates", b"O-1")
    }  # fmt: skip
    assert sent[("reservations", b"SKU-1")] == released
    assert msgspec.json.decode(sent[("updates", b"O-1")]) == {
        "order_id": "O-1", "status": "allocated", "lines": [], "reason": "confirmed", "as_of": "t"
    }  # fmt: skip
    outbox.publish()
    outbox.publish()
    assert store.outbox_entries == {}  # all acknowledged, and the one value still current


def test_a_value_no_longer_current_once_acknowledged_is_published_again() -> None:
    """An entry the sweep found may land after a newer value: its check sends the current
    value again, so the last message per key is the current one (contract section 3)."""
    store = MemoryStore(initialized="test")
    producer = FakeProducer()
    outbox = OutboxPublisher(store, producer, "availability")  # type: ignore[arg-type]
    store.write(
        ChangeSet(offsets={"t\x1f0": 1}, outbox={"web\x1fSKU-1": event("web", 5)}, outbox_id="api"),
        0,
    )
    stored(store, "web", 9)  # changed since, and published by its writer already
    outbox.publish(from_store=True)
    outbox.publish()
    assert published(producer) == [("web", 5), ("web", 9)]
    outbox.publish()
    outbox.publish()
    assert published(producer) == [("web", 5), ("web", 9)]  # current now: nothing more


def test_a_value_sent_again_whose_delivery_failed_is_sent_once_more() -> None:
    store = MemoryStore(initialized="test")
    producer = FakeProducer()
    outbox = OutboxPublisher(store, producer, "availability")  # type: ignore[arg-type]
    store.write(
        ChangeSet(offsets={"t\x1f0": 1}, outbox={"web\x1fSKU-1": event("web", 5)}, outbox_id="api"),
        0,
    )
    stored(store, "web", 9)
    outbox.publish(from_store=True)
    outbox.publish()  # 5 acknowledged, not current: 9 sent again
    producer.producer._reports.clear()  # ... and lost on the way
    outbox._delivered("resend-1", "broker down", None)  # type: ignore[arg-type]
    assert "api" in store.outbox_entries  # stands until the value sent again is checked
    outbox.publish()
    outbox.publish()
    outbox.publish()
    assert published(producer) == [("web", 5), ("web", 9), ("web", 9)]
    assert store.outbox_entries == {}


def test_an_entry_from_the_store_stays_there_until_its_check_passes() -> None:
    """A crash between the acknowledgement and the check, or a store that cannot be read
    for the check, leaves the entry to be published (and checked) again."""
    store = MemoryStore(initialized="test")
    producer = FakeProducer()
    outbox = OutboxPublisher(store, producer, "availability")  # type: ignore[arg-type]
    store.write(
        ChangeSet(offsets={"t\x1f0": 1}, outbox={"web\x1fSKU-1": event("web", 5)}, outbox_id="api"),
        0,
    )
    stored(store, "web", 9)
    outbox.publish(from_store=True)
    store.down = True
    with pytest.raises(StoreDown):
        outbox.publish()  # acknowledged; the check cannot read the store
    store.down = False
    assert "api" in store.outbox_entries
    restarted = OutboxPublisher(store, producer, "availability")  # type: ignore[arg-type]
    for _ in range(4):
        restarted.publish(from_store=True)
    assert published(producer)[-1] == ("web", 9) and store.outbox_entries == {}


def test_a_failed_delivery_leaves_the_entry_to_be_published_again() -> None:
    store = MemoryStore(initialized="test")
    producer = FakeProducer()
    outbox = OutboxPublisher(store, producer, "availability")  # type: ignore[arg-type]
    stored(store, "web", 1)
    store.write(
        ChangeSet(offsets={"t\x1f0": 1}, outbox={"web\x1fSKU-1": event("web", 1)}, outbox_id="w1"),
        0,
    )
    outbox.publish(from_store=True)
    outbox._delivered("w1", "broker down", None)  # type: ignore[arg-type]
    producer.producer._reports.clear()
    assert outbox.ack_delivered() == 0 and "w1" in store.outbox_entries
    outbox.publish(from_store=True)
    assert published(producer) == [("web", 1), ("web", 1)]
    assert dict(decode_outbox(store.outbox_entries["w1"])) == {"web\x1fSKU-1": event("web", 1)}


# -- the loop ------------------------------------------------------------------------------


def stream(store: MemoryStore, ledger: Ledger | None = None) -> ConsumerLoop:
    return ConsumerLoop(
        FakeConsumer(), FakeProducer(), store, PROJECTOR, OPTIONS,  # type: ignore[arg-type]
        clock=lambda: NOW, ledger=ledger,
    )  # fmt: skip


def on_hand(store: MemoryStore, sku: str = "SKU-1") -> int:
    return int(json.loads(store.documents_of[sku]["p:web"])["on_hand"])


def test_a_batch_is_written_once_with_its_offsets_and_announced() -> None:
    store = MemoryStore()
    loop = stream(store)
    loop.process([message(n, receipt(n, quantity=2)) for n in range(3)])  # type: ignore[misc]
    assert store.initialized == "consumer" and store.writes == 1
    assert on_hand(store) == 6 and store.stored_offsets == {offset_field(MOVES, 0): 3}
    sent = [m for m in loop.producer.sent if m.topic == "availability"]  # type: ignore[attr-defined]
    assert {msgspec.json.decode(m.value)["channel"] for m in sent} == {"web", "marketplace"}
    loop.process([message(n, receipt(n, quantity=2)) for n in range(3)])  # type: ignore[misc]
    assert on_hand(store) == 6 and loop.stats.duplicates == 3  # redelivered: nothing changes


def test_a_sku_changed_by_another_writer_is_read_and_folded_again() -> None:
    store = MemoryStore()
    loop = stream(store)
    loop.process([message(0, receipt(0, quantity=5))])  # type: ignore[misc]
    # Another writer (the API) moves the sku's version; the kept state is now stale.
    other = loop.store.read(["SKU-1"])
    store.versions["SKU-1"] = other.versions["SKU-1"] + 1
    loop.process([message(1, receipt(1, quantity=1))])  # type: ignore[misc]
    assert loop.stats.conflicts == 1 and on_hand(store) == 6


def test_a_changed_server_means_consuming_again_from_its_offsets() -> None:
    store = MemoryStore()
    loop = stream(store)
    loop.consumer.assign([TopicPartition(MOVES, 0)])
    loop.process([message(0, receipt(0, quantity=5))])  # type: ignore[misc]
    store.server = "memory-2"  # restarted, or a replica took over
    loop.process([message(1, receipt(1, quantity=1))])  # type: ignore[misc]
    # Not written on the old assumptions: the partition starts again at the stored offset.
    assert on_hand(store) == 5 and loop.consumer.seeks == [(MOVES, 0, 1)]  # type: ignore[attr-defined]
    loop.process([message(1, receipt(1, quantity=1))])  # type: ignore[misc]
    assert on_hand(store) == 6 and loop.written.server == "memory-2"


def test_a_store_that_lost_its_data_is_not_folded_onto(tmp_path: Any) -> None:
    store = MemoryStore()
    ledger = Ledger(str(tmp_path / "ledger"))
    loop = stream(store, ledger)
    loop.process([message(0, receipt(0))])  # type: ignore[misc]
    store.__init__()  # type: ignore[misc]  # emptied: no marker, no data
    with pytest.raises(LedgerAhead):
        loop.process([message(1, receipt(1))])  # type: ignore[misc]
    assert store.writes == 0


def test_the_sweep_publishes_what_an_earlier_instance_left_in_the_outbox() -> None:
    store = MemoryStore(initialized="test")
    stored(store, "web", 7)
    store.write(
        ChangeSet(offsets={"t\x1f0": 1}, outbox={"web\x1fSKU-1": event("web", 7)}, outbox_id="old"),
        0,
    )
    loop = stream(store)
    for _ in range(3):  # published; acknowledged and checked; deleted
        loop.sweep()
    assert published(loop.producer) == [("web", 7)]  # type: ignore[arg-type]
    assert store.outbox_entries == {} and loop.stats.published == 1
