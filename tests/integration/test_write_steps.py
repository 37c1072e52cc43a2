"""A consumer's write over many skus goes in steps of a few skus (one script each), so that
Redis is never held for long. Against a real Redis: a write refused or cut short between
its steps delays and loses nothing, applies nothing twice, and leaves one ledger row per
message with the status it had."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from atp_service.config import parse_config
from atp_service.model import projector_for
from atp_service.orders import LineResult, OrderResult, StoredOrder, encode_stored
from atp_service.store import keys, redis_store, sending
from atp_service.store.redis_store import initialize
from streams.changeset import build_changeset, decode_outbox, projection_field
from streams.consumer import ConsumerLoop
from streams.ledger import Ledger, staged_table
from tests.conftest import config_text
from tests.fakes import CutShort, FakeMessage, FakeProducer
from tests.integration.inprocess import TOPIC, QueueConsumer, options_for, stored_offset

pytestmark = pytest.mark.integration

SKUS = [f"SKU-{n}" for n in range(10)]
STEP = 3  # 10 skus: steps of 3, 3, 3 and a last one of 1


def receipt(event_id: str, sku: str, quantity: int) -> bytes:
    return json.dumps({
        "type": "bin_movement", "event_id": event_id, "occurred_at": "2026-11-27T08:00:00Z",
        "sku": sku, "location": "DC-EAST", "quantity": quantity,
        "to_bin": "A1", "to_status": "available",
    }).encode()  # fmt: skip


def backorder(event_id: str, sku: str, order_id: str, quantity: int) -> bytes:
    """A claim the API made for a backordered line: no stock yet, promised in 5 days."""
    return json.dumps({
        "type": "reservation_created", "event_id": event_id,
        "occurred_at": "2026-11-27T07:00:00Z", "reservation_id": f"{order_id}:1:DC-EAST:backorder",
        "sku": sku, "channel": "web", "location": "DC-EAST", "quantity": quantity,
        "expires_at": None, "placed_at": "2026-11-27T07:00:00Z", "promise_date": "2026-12-02",
    }).encode()  # fmt: skip


def wave(first: int, quantity: int) -> list[FakeMessage]:
    """One receipt per sku, at offsets first.."""
    return [
        FakeMessage(TOPIC, 0, first + n, receipt(f"e-{first + n}", sku, quantity), sku.encode())
        for n, sku in enumerate(SKUS)
    ]


@pytest.fixture(autouse=True, params=["rows inline", "rows by key"])
def rows_by_key(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test twice: staged ledger rows passed to the last script, and (as a large
    batch's are) SET to a key of their own that the script names."""
    by_key: bool = request.param == "rows by key"
    if by_key:
        monkeypatch.setattr(redis_store, "ROWS_INLINE_MAX", 0)
    return by_key


@pytest.fixture
def new_consumer(redis_url: str, tmp_path: Path) -> Iterator[Callable[[], ConsumerLoop]]:
    """A consumer process, as started afresh (nothing kept from an earlier one)."""
    settings = parse_config(config_text(redis_url=redis_url, ledger_dir=str(tmp_path / "ledger")))
    client = redis.Redis.from_url(redis_url)
    initialize(client, keys.SINGLE, "test")

    def make() -> ConsumerLoop:
        store = CutShort(client, settings.kafka.group_id, 7 * 86_400_000, step_skus=STEP)
        return ConsumerLoop(
            QueueConsumer([]), FakeProducer(), store, projector_for(settings),  # type: ignore[arg-type]
            options_for(settings), ledger=Ledger(tmp_path / "ledger"),
        )  # fmt: skip

    yield make
    client.close()


def on_hand(stream: ConsumerLoop) -> dict[str, int]:
    found = {}
    for sku in SKUS:
        raw = stream.store.client.hget(keys.SINGLE.sku_key(sku), projection_field("web"))
        found[sku] = int(json.loads(raw)["on_hand"]) if raw else 0
    return found


def ledger_statuses(stream: ConsumerLoop) -> dict[int, str]:
    table = staged_table(stream.store.staged_ledger())
    assert table is not None
    offsets = table["source_offset"].to_pylist()
    assert len(offsets) == len(set(offsets)), "one ledger row per message"
    return dict(zip(offsets, table["status"].to_pylist(), strict=True))


def unfinished_writes(stream: ConsumerLoop) -> list[bytes]:
    return list(stream.store.client.scan_iter(match=f"{keys.PREFIX}:*partial:*"))


def test_a_write_over_many_skus_lands_whole_in_steps(
    new_consumer: Callable[[], ConsumerLoop],
) -> None:
    stream = new_consumer()
    stream.process(wave(0, 2))
    stream.process(wave(10, 3))
    assert on_hand(stream) == dict.fromkeys(SKUS, 5)
    assert stored_offset(stream) == 20
    assert ledger_statuses(stream) == dict.fromkeys(range(20), "applied")
    assert unfinished_writes(stream) == []
    # Every step's events were announced, and acknowledged from every step's outbox field.
    stream.finish(timeout_s=1)
    sent = [json.loads(m.value) for m in stream.producer.sent if m.topic == "availability"]
    assert {(e["sku"], e["available_to_sell"]) for e in sent if e["channel"] == "web"} == {
        (sku, n) for sku in SKUS for n in (2, 5)
    }
    assert stream.store.client.hlen(keys.SINGLE.outbox_key(0)) == 0


def test_a_step_refused_moves_no_offset_and_the_retry_applies_each_event_once(
    new_consumer: Callable[[], ConsumerLoop],
) -> None:
    stream = new_consumer()
    stream.process(wave(0, 2))  # kept as written: the next batch is folded without a read
    # As the API's safety-stock override does to SKU-4, in the second step of the next write.
    store = stream.store
    snapshot = store.read(["SKU-4"])
    state = msgspec.structs.replace(snapshot.states["SKU-4"], safety_stock={"web": 1})
    now = stream.clock()
    changes = build_changeset([state], snapshot.versions, stream.projector, now)
    assert not store.write(changes, now // 1000)
    stream.process(wave(10, 3))
    assert stream.stats.conflicts == 1
    assert on_hand(stream) == dict.fromkeys(SKUS, 5)
    assert stored_offset(stream) == 20
    # The first and third steps landed before the retry: their events are applied once,
    # and the ledger says so.
    assert ledger_statuses(stream) == dict.fromkeys(range(20), "applied")


@pytest.mark.parametrize("cut_after", [1, 2, 3])
def test_a_consumer_killed_between_steps_is_followed_exactly(
    new_consumer: Callable[[], ConsumerLoop], cut_after: int
) -> None:
    first = new_consumer()
    first.process(wave(0, 2))
    first.store.cut_after = cut_after  # type: ignore[attr-defined]
    with pytest.raises(redis.ConnectionError):
        first.process(wave(10, 3))
    assert stored_offset(first) == 10  # the last step never ran
    assert unfinished_writes(first)
    # A true duplicate of an event the cut write applied, in the same batch again.
    again = [*wave(10, 3), FakeMessage(TOPIC, 0, 20, receipt("e-10", "SKU-0", 3), b"SKU-0")]
    second = new_consumer()
    second.process(again)
    assert on_hand(second) == dict.fromkeys(SKUS, 5)
    assert stored_offset(second) == 21
    statuses = ledger_statuses(second)
    assert statuses == {**dict.fromkeys(range(20), "applied"), 20: "duplicate"}
    # What the cut write announced is in the outbox still, for the sweep to publish.
    events = [
        name
        for blob in second.store.client.hvals(keys.SINGLE.outbox_key(0))
        for name, _ in decode_outbox(blob)
    ]
    assert len(events) >= cut_after * STEP


def test_rows_kept_by_key_stay_until_they_are_in_a_file_and_then_go(
    new_consumer: Callable[[], ConsumerLoop], rows_by_key: bool
) -> None:
    stream = new_consumer()
    stream.process(wave(0, 2))
    client = stream.store.client
    staged = client.hgetall(keys.SINGLE.staged_key(0))
    named = [blob[1:] for blob in staged.values() if blob.startswith(b"@")]
    assert len(named) == (len(staged) if rows_by_key else 0)
    assert all(client.pttl(key) == -1 for key in named)  # kept: no expiry once named
    assert ledger_statuses(stream) == dict.fromkeys(range(10), "applied")
    stream.flusher.owned = frozenset({(TOPIC, 0)})  # as the partition's assignment leaves it
    assert stream.flush_ledger() == len(staged)
    assert client.hlen(keys.SINGLE.staged_key(0)) == 0
    assert list(client.scan_iter(match=f"{keys.PREFIX}:*rows:*")) == []


def test_two_consumers_killed_between_steps_in_turn_are_followed_exactly(
    new_consumer: Callable[[], ConsumerLoop],
) -> None:
    """The second, refolding the first's batch with one more event, writes in its first
    step a sku whose events the first cut write applied, and is cut short too: the third
    still counts those events applied, once."""
    first = new_consumer()
    first.process(wave(0, 2))
    first.store.cut_after = 2  # type: ignore[attr-defined]
    with pytest.raises(redis.ConnectionError):
        first.process(wave(10, 3))  # SKU-0..5 applied, the offsets not moved
    more = [*wave(10, 3), FakeMessage(TOPIC, 0, 20, receipt("e-20", "SKU-0", 1), b"SKU-0")]
    second = new_consumer()
    second.store.cut_after = 1  # type: ignore[attr-defined]
    with pytest.raises(redis.ConnectionError):
        second.process(more)  # its first step: SKU-0 (e-20), SKU-6, SKU-7
    third = new_consumer()
    third.process(more)
    assert on_hand(third) == {**dict.fromkeys(SKUS, 5), "SKU-0": 6}
    assert stored_offset(third) == 21
    assert ledger_statuses(third) == dict.fromkeys(range(21), "applied")


@pytest.mark.parametrize("cut_after", [1, 3])
def test_orders_hear_of_lines_a_cut_write_confirmed(
    new_consumer: Callable[[], ConsumerLoop], cut_after: int
) -> None:
    """A receipt wave confirms a backordered line on every sku, and the write is cut short
    after its first steps: those steps' skus are duplicates when the batch is folded again,
    so nothing plans them again, yet each order still hears that its line is confirmed."""
    first = new_consumer()
    client = first.store.client
    for n, sku in enumerate(SKUS):
        line = LineResult("1", sku, 2, [], 2, "2026-12-02", 0)
        result = OrderResult(f"B-{n}", "web", "allocated", [line])
        client.set(keys.SINGLE.order_key(f"B-{n}"), encode_stored(StoredOrder("x", result, [])))
    first.process([
        FakeMessage(TOPIC, 0, n, backorder(f"c-{n}", sku, f"B-{n}", 2), sku.encode())
        for n, sku in enumerate(SKUS)
    ])  # fmt: skip
    first.finish(timeout_s=1)
    first.store.cut_after = cut_after  # type: ignore[attr-defined]
    with pytest.raises(redis.ConnectionError):
        first.process(wave(10, 2))
    second = new_consumer()
    second.process(wave(10, 2))
    second.publish_outbox(from_redis=True)  # what the cut write left, as the sweep does
    second.finish(timeout_s=1)

    updates = first.producer.sent + second.producer.sent
    last: dict[str, Any] = {}
    for message in updates:
        if message.topic.endswith("allocation-updates"):
            notice = json.loads(message.value)
            last[notice["order_id"]] = notice
    assert sorted(last) == sorted(f"B-{n}" for n in range(len(SKUS)))
    for order_id, notice in last.items():
        (line,) = notice["lines"]
        assert (line["backordered"], sum(a["quantity"] for a in line["allocations"])) == (0, 2), (
            order_id
        )


def test_a_write_keeps_at_most_two_steps_unanswered(redis_url: str) -> None:
    """Redis runs what one client pipelined back to back, holding every allocation and read
    meanwhile: a write sends its next step only once at most one is left unanswered, and
    gets every answer (errors as values) in the order of its steps."""
    client = redis.Redis.from_url(redis_url)
    nodes = sending.NodeConnections(client, sending.STEPS_IN_FLIGHT)
    most = 0
    for n in range(12):
        command = ("HGET", f"k{n}") if n == 5 else ("INCR", f"k{n}")  # HGET lacks a field
        nodes.send(f"k{n}", command)
        most = max(most, len(nodes.unread[""]))
    answers = nodes.answers()
    nodes.release()
    assert most == sending.STEPS_IN_FLIGHT == 2
    assert [a if not isinstance(a, redis.ResponseError) else "error" for a in answers] == [
        *[1] * 5,
        "error",
        *[1] * 6,
    ]
    client.close()
