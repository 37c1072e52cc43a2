"""Stock states out (contract section 12): which transitions a write announces, and how a
state that is stale by the time the broker has it is corrected."""

from __future__ import annotations

from typing import Any

import msgspec

from allocation.network import Network
from streams.changeset import build_changeset, outbox_kind
from streams.consumer.outbox import OutboxPublisher
from streams.projector import Projector
from streams.state import BinStock, SkuState
from tests.channels import Channel
from tests.fakes import FakeProducer, MemoryStore

PROJECTOR = Projector(
    Network.of(
        [
            Channel("web", 1, ("L",), 0, 14, low_stock_threshold=3),
            Channel("feed", 2, ("L",), 0, 14),
        ]
    ),
    frozenset({"available"}),
    ({}, {}),
)


def states_announced(previous: dict[str, int], on_hand: int) -> list[dict[str, Any]]:
    state = SkuState("S", bins=(BinStock("L", "A", "available", on_hand),), last_ats=previous)
    changes = build_changeset([state], {}, PROJECTOR, 0)
    return sorted(
        (msgspec.json.decode(v) for k, v in changes.outbox.items() if outbox_kind(k)[0] == "s"),
        key=lambda e: e["channel"],
    )


def short(events: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    return [(e["channel"], e["previous_state"], e["state"], e["available_to_sell"]) for e in events]


def test_transitions_between_out_low_and_in_stock_are_announced_once() -> None:
    # Never seen and still 0: out of stock, not announced.
    assert states_announced({}, 0) == []
    # First seen with 2: low on web (threshold 3), in stock on feed (threshold 0).
    assert short(states_announced({}, 2)) == [
        ("feed", "out_of_stock", "in_stock", 2),
        ("web", "out_of_stock", "low_stock", 2),
    ]
    assert short(states_announced({"web": 2, "feed": 2}, 3)) == []  # 3 is still low on web
    assert short(states_announced({"web": 3, "feed": 3}, 4)) == [
        ("web", "low_stock", "in_stock", 4)
    ]
    assert short(states_announced({"web": 4, "feed": 4}, 0)) == [
        ("feed", "in_stock", "out_of_stock", 0),
        ("web", "in_stock", "out_of_stock", 0),
    ]


def test_a_state_no_longer_current_once_acknowledged_is_sent_again() -> None:
    store = MemoryStore(initialized="test")
    producer = FakeProducer()
    outbox = OutboxPublisher(
        store,
        producer,
        "availability",
        "reservations",
        "updates",
        "states",
        {"web": 3},  # type: ignore[arg-type]
    )
    state = SkuState("S", bins=(BinStock("L", "A", "available", 5),))
    changes = build_changeset([state], {}, PROJECTOR, 0)  # web: out_of_stock -> in_stock
    changes.offsets = {"t\x1f0": 1}
    store.write(changes, 0)
    # Meanwhile a newer write left web at 0 (its own messages went out already).
    doc = {"channel": "web", "sku": "S", "available_to_sell": 0, "as_of": "later"}
    store.documents_of["S"] = {"p:web": msgspec.json.encode(doc), "p:feed": msgspec.json.encode(
        {"channel": "feed", "sku": "S", "available_to_sell": 5, "as_of": "later"})}  # fmt: skip
    outbox.publish(from_store=True)
    outbox.publish()
    sent = [msgspec.json.decode(m.value) for m in producer.sent if m.topic == "states"]
    assert [(e["channel"], e["state"]) for e in sent] == [
        ("web", "in_stock"), ("feed", "in_stock"), ("web", "out_of_stock")
    ]  # fmt: skip
    assert sent[-1]["previous_state"] == "in_stock" and sent[-1]["available_to_sell"] == 0
    outbox.publish()
    outbox.publish()
    assert store.outbox_entries == {}
