"""The sweep step (streams/consumer/sweep.py) against the in-memory store: skus whose
projection changes with no event (a reservation's expires_at passed) and kits whose
components changed are recomputed, written, re-planned and announced."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from prometheus_client import REGISTRY

from allocation.kits import KitComponent, KitDefinition
from atp_service.config import parse_config
from atp_service.model import projector_for
from streams.backorders import open_claims
from streams.changeset import ChangeSet, build_changeset
from streams.consumer.options import Stats
from streams.consumer.outbox import OutboxPublisher
from streams.consumer.sweep import Sweeper
from streams.consumer.written import WrittenStates
from streams.state import BinStock, Reservation, SkuState
from tests.conftest import config_text
from tests.fakes import FakeProducer, MemoryStore

PROJECTOR = projector_for(parse_config(config_text()))
NOW = 1_796_000_000_000_000
SECOND = 1_000_000
WINDOW = 7 * 86_400 * SECOND


def put(store: MemoryStore, *states: SkuState, now: int = NOW) -> None:
    """Write states as any writer would (projection, due time, outbox), on their versions."""
    versions = {s.sku: store.versions.get(s.sku, 0) for s in states}
    assert store.write(build_changeset(states, versions, PROJECTOR, now), now // 1000) == []


def stock(sku: str, quantity: int, *reservations: Reservation) -> SkuState:
    bins = (BinStock("DC-EAST", "A1", "available", quantity),) if quantity else ()
    return SkuState(sku, bins=bins, reservations=reservations)


def expiring(rid: str, quantity: int, expires_at: int) -> Reservation:
    return Reservation(rid, True, "web", "DC-EAST", quantity, expires_at=expires_at)


class Sweep:
    """A Sweeper wired as the loop wires it, its outbox published to a fake broker."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.producer = FakeProducer()
        self.outbox = OutboxPublisher(
            store,
            self.producer,  # type: ignore[arg-type]
            "availability",
            "reservations",
            "updates",
        )
        self.written = WrittenStates(store)
        self.stats = Stats()
        self.sweeper = Sweeper(
            store, PROJECTOR, self.written, self.outbox, self.stats, WINDOW, lambda now: None
        )

    def run(
        self, at: int, write: Callable[[ChangeSet, int], list[str] | None] | None = None
    ) -> None:
        self.sweeper.sweep(lambda: at, write or self.write, budget_s=1.0)
        self.outbox.publish()  # handed to the broker
        self.outbox.publish()  # acknowledged, and checked against the store

    def write(self, changes: ChangeSet, now_us: int) -> list[str] | None:
        return self.store.write(changes, now_us // 1000)

    def sent(self, topic: str = "availability") -> list[dict[str, object]]:
        return [msgspec.json.decode(m.value) for m in self.producer.sent if m.topic == topic]


def web(store: MemoryStore, sku: str = "SKU-1") -> int:
    doc = msgspec.json.decode(store.documents_of[sku]["p:web"])
    return int(doc["available_to_sell"])


def test_an_expired_reservation_stops_counting_and_the_change_is_announced() -> None:
    store = MemoryStore(initialized="test")
    put(store, stock("SKU-1", 5, expiring("OMS-1", 3, NOW + SECOND)))
    assert web(store) == 2
    sweep = Sweep(store)
    sweep.run(NOW + 2 * SECOND)
    assert web(store) == 5  # what a read returns now
    assert [(e["channel"], e["available_to_sell"]) for e in sweep.sent()] == [("web", 5)]
    assert sweep.stats.swept == 1
    # Done with: not due any more, so the next sweep writes nothing.
    writes = store.writes
    sweep.run(NOW + 3 * SECOND)
    assert store.writes == writes and len(sweep.sent()) == 1


def test_a_reservation_not_yet_expired_is_left_alone() -> None:
    store = MemoryStore(initialized="test")
    put(store, stock("SKU-1", 5, expiring("OMS-1", 3, NOW + SECOND)))
    writes = store.writes
    sweep = Sweep(store)
    sweep.run(NOW + SECOND // 2)
    assert store.writes == writes and sweep.sent() == [] and web(store) == 2
    sweep.run(NOW + SECOND)  # due at its expires_at, not a moment later
    assert web(store) == 5


def test_the_swept_state_is_what_the_next_batch_folds_on() -> None:
    """The loop folds a sku's next events on the state it wrote last: after the sweep that is
    the swept one, and a batch folded ahead on the state before it is not used."""
    store = MemoryStore(initialized="test")
    put(store, stock("SKU-1", 5, expiring("OMS-1", 3, NOW + SECOND)))
    sweep = Sweep(store)
    sweep.run(NOW + 2 * SECOND)
    version, state = sweep.written.states["SKU-1"]
    assert version == store.versions["SKU-1"] and state == store.states["SKU-1"]
    assert "SKU-1" in sweep.written.swept


def test_freed_stock_converts_a_waiting_backorder_and_tells_the_order() -> None:
    """Contract section 9: an expiry is a supply change; the backorder is re-planned."""
    store = MemoryStore(initialized="test")
    store.orders["W-1"] = b'{"order_id":"W-1","status":"backordered","lines":[]}'
    claim = Reservation(
        "W-1:1:DC-EAST:backorder", True, "web", "DC-EAST", 2, placed_at=NOW - 3600 * SECOND
    )
    put(store, stock("SKU-1", 5, expiring("OMS-1", 5, NOW + SECOND), claim))
    later = NOW + 2 * SECOND
    sweep = Sweep(store)
    sweep.run(later)
    state = store.state("SKU-1")
    assert open_claims(state, later) == []
    held = [(r.reservation_id.split("#")[0], r.open_quantity(later)) for r in state.reservations]
    assert ("W-1:1:DC-EAST", 2) in held
    assert web(store) == 3  # 5 freed, 2 of them now the order's
    kinds = sorted(str(e["type"]) for e in sweep.sent("reservations"))
    assert kinds == ["reservation_created", "reservation_released"]
    (update,) = sweep.sent("updates")
    assert update["order_id"] == "W-1" and update["reason"] == "confirmed"


def test_a_kit_follows_its_components_once_swept() -> None:
    """Contract section 10: a kit's value is the min over its components, announced too."""
    store = MemoryStore(initialized="test")
    kit = KitDefinition("KIT-1", (KitComponent("KC-A", 2), KitComponent("KC-B", 1)))
    store.install_kits([kit], NOW // 1000)
    put(store, stock("KC-A", 4), stock("KC-B", 3))
    sweep = Sweep(store)
    sweep.run(NOW + SECOND)
    assert web(store, "KIT-1") == 2
    put(store, SkuState("KC-A"), now=NOW + 2 * SECOND)  # KC-A sold out: the kit is due again
    sweep.run(NOW + 3 * SECOND)
    assert web(store, "KIT-1") == 0
    kit_values = [e["available_to_sell"] for e in sweep.sent() if e["sku"] == "KIT-1"]
    assert kit_values == [2, 0]


def test_a_sku_another_writer_changed_meanwhile_is_read_again_and_swept() -> None:
    """The API reserved one more unit between the sweep's read and its write: the write is
    refused for that sku, which is read again; neither change is lost."""
    store = MemoryStore(initialized="test")
    first = expiring("OMS-1", 3, NOW + SECOND)
    put(store, stock("SKU-1", 5, first))
    sweep = Sweep(store)
    calls: list[int] = []

    def api_writes_first(changes: ChangeSet, now_us: int) -> list[str] | None:
        if not calls:
            api = Reservation("API-1", True, "web", "DC-EAST", 1)
            put(store, stock("SKU-1", 5, first, api), now=NOW + SECOND // 2)
        calls.append(now_us)
        return sweep.write(changes, now_us)

    sweep.run(NOW + 2 * SECOND, api_writes_first)
    assert len(calls) == 2
    assert web(store) == 4  # the expiry and the API's reservation both count
    assert [e["available_to_sell"] for e in sweep.sent()] == [4]
    assert store.due(NOW // 1000 + 10_000, limit=10) == []


def test_a_write_to_prepare_again_is_prepared_again_not_dropped() -> None:
    """``write`` returns None when the store's server changed or lost its data."""
    store = MemoryStore(initialized="test")
    put(store, stock("SKU-1", 5, expiring("OMS-1", 3, NOW + SECOND)))
    sweep = Sweep(store)
    answers: list[list[str] | None] = [None]

    def replaced_once(changes: ChangeSet, now_us: int) -> list[str] | None:
        return answers.pop() if answers else sweep.write(changes, now_us)

    sweep.run(NOW + 2 * SECOND, replaced_once)
    assert web(store) == 5 and sweep.stats.swept == 1


def test_each_expiry_is_counted_once() -> None:
    """atp_reservation_expiries_total: a reservation already counted by an earlier sweep is
    not counted again when its sku is swept again for another expiry."""

    def expired() -> float:
        return REGISTRY.get_sample_value("atp_reservation_expiries_total") or 0.0

    store = MemoryStore(initialized="test")
    early, late = expiring("OMS-1", 1, NOW + SECOND), expiring("OMS-2", 1, NOW + 3 * SECOND)
    put(store, stock("SKU-1", 5, early, late))
    sweep = Sweep(store)
    before = expired()
    sweep.run(NOW + 2 * SECOND)
    assert expired() - before == 1
    sweep.run(NOW + 4 * SECOND)
    assert expired() - before == 2
