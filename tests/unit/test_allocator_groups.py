"""Single orders written in groups (atp_service.allocator): concurrent requests share one read,
one write and one wait for the broker, yet each answers exactly as if allocated alone in
arrival order; repeats, conflicts, refused input and broker failures stay per order."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from allocation.network import Network
from atp_service.allocator import Allocator, OrderConflict, PublishFailed
from atp_service.orders import OrderLine, OrderRequest, plan
from atp_service.store import keys
from streams.backorders import build_replanned
from streams.projector import Projector
from streams.state import US_PER_DAY, BinStock, InboundLine, SkuState, load_state
from tests.channels import Channel
from tests.fakes import FakeBroker, FakeStore, SlowBroker

NOW_US = 20_000 * US_PER_DAY


PROJECTOR = Projector(
    Network.of([Channel("web", 1, ("L0", "L1"), 0, 7), Channel("b2b", 2, ("L1",), 1, 7)]),
    frozenset({"available"}),
    ({}, {}),
)


def stocked(**skus: int) -> dict[str, SkuState]:
    return {
        sku: SkuState(
            sku,
            bins=(
                BinStock("L0", "B", "available", units // 2),
                BinStock("L1", "B", "available", units - units // 2),
            ),
        )
        for sku, units in skus.items()
    }


def order(order_id: str, channel: str = "web", **lines: int) -> OrderRequest:
    return OrderRequest(
        order_id, channel, [OrderLine(str(i), sku, q) for i, (sku, q) in enumerate(lines.items())]
    )


def run(allocator: Allocator, orders: list[OrderRequest]) -> list[Any]:
    async def go() -> list[Any]:
        return await asyncio.gather(
            *(allocator.allocate([o]) for o in orders), return_exceptions=True
        )

    return asyncio.run(go())


def test_concurrent_orders_share_writes_and_answer_as_if_one_after_another() -> None:
    states = stocked(A=7, B=3)
    store, broker = FakeStore(states), FakeBroker()
    allocator = Allocator(store, PROJECTOR, broker.send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]
    orders = [order(f"o{i}", "b2b" if i % 3 == 0 else "web", A=2, B=1) for i in range(8)]
    answers = run(allocator, orders)

    # The same answers as each order alone, in arrival order.
    current = dict(states)
    for got, o in zip(answers, orders, strict=True):
        alone = plan([o], {s: current[s] for s in ("A", "B")}, PROJECTOR, NOW_US, scalar=False)
        current.update({s.sku: s for s in alone.states})
        assert got == [(alone.results[0], True)]
    assert store.writes < len(orders)  # written in groups
    assert store.open_units("A", NOW_US) == sum(
        a.quantity
        for r in answers
        for line in r[0][0].lines
        if line.sku == "A"
        for a in line.allocations
    )
    assert store.open_units("A", NOW_US) <= 7 and store.open_units("B", NOW_US) <= 3
    # Every reservation was published once, with the order's own correlation id (none here).
    published = [m for batch in broker.sends for m in batch]
    assert len(published) == sum(
        len(r[0][0].lines[0].allocations) + len(r[0][0].lines[1].allocations) for r in answers
    )
    # Each write noted its orders unpublished; once acknowledged, none is left for a sweep.
    assert store.hashes and not any(store.hashes.values())


def test_repeats_conflicts_and_duplicates_in_one_burst() -> None:
    store, broker = FakeStore(stocked(A=10)), FakeBroker()
    allocator = Allocator(store, PROJECTOR, broker.send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]
    (first,) = run(allocator, [order("done", A=1)])
    burst = [
        order("done", A=1),
        order("done", A=2),
        order("new", A=1),
        order("new", A=1),
        order("x", A=1),
    ]
    answers = run(allocator, burst)
    assert answers[0] == [(first[0][0], False)]  # a stored repeat: 200, same result
    assert isinstance(answers[1], OrderConflict)  # another body: 409
    # The same new order twice at once: allocated once, the other answered as its repeat.
    assert answers[2][0][1] is True and answers[3] == [(answers[2][0][0], False)]
    assert answers[4][0][1] is True
    assert store.open_units("A", NOW_US) == 3


def test_a_refused_order_fails_alone_and_a_conflict_is_retried() -> None:
    store, broker = FakeStore(stocked(A=10)), FakeBroker()
    store.conflict_next = 1
    allocator = Allocator(store, PROJECTOR, broker.send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]
    bad = OrderRequest("bad", "web", [OrderLine("1", "A", 0)])  # the HTTP layer refuses it earlier
    answers = run(allocator, [order("a", A=1), bad, order("b", A=2)])
    assert isinstance(answers[1], ValueError)
    assert answers[0][0][1] and answers[2][0][1]
    assert store.open_units("A", NOW_US) == 3


def test_a_broker_failure_undoes_the_whole_group() -> None:
    store, broker = FakeStore(stocked(A=10)), FakeBroker(fail=True)
    allocator = Allocator(store, PROJECTOR, broker.send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]
    answers = run(allocator, [order(f"o{i}", A=1) for i in range(5)])
    assert all(isinstance(a, PublishFailed) for a in answers)
    assert store.open_units("A", NOW_US) == 0
    assert not any(k.startswith(keys.SINGLE.order_key("")) for k in store.strings)


def test_an_allocation_undone_gives_back_the_capacity_it_took() -> None:
    capped = Projector(PROJECTOR.network, PROJECTOR.sellable, ({}, {}), capacities={"L0": 50})
    store = FakeStore(stocked(A=10))
    allocator = Allocator(store, capped, FakeBroker().send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]
    run(allocator, [order("kept", A=3)])
    assert store.capacity == {"L0": 3}
    failing = Allocator(store, capped, FakeBroker(fail=True).send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]
    [answer] = run(failing, [order("undone", A=2)])
    assert isinstance(answer, PublishFailed)
    assert store.capacity == {"L0": 3}  # the undone order's 2 units are back
    assert store.open_units("A", NOW_US) == 3


@pytest.mark.parametrize("size", [1, 3])
def test_each_event_carries_its_own_requests_correlation_id(size: int) -> None:
    from streams.logs import correlation_id

    store, broker = FakeStore(stocked(A=10)), FakeBroker()
    allocator = Allocator(store, PROJECTOR, broker.send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]

    async def one(i: int) -> None:
        correlation_id.set(f"cid-{i}")
        await allocator.allocate([order(f"o{i}", A=1)])

    async def go() -> None:
        await asyncio.gather(*(one(i) for i in range(size)))

    asyncio.run(go())
    published = [m for batch in broker.sends for m in batch]
    assert sorted(dict(m.headers)["correlation-id"] for m in published) == [
        f"cid-{i}".encode() for i in range(size)
    ]
    for message in published:
        assert (
            f'"correlation_id":"{dict(message.headers)["correlation-id"].decode()}"'.encode()
            in message.value
        )


def test_shutdown_drain_lets_a_publish_in_flight_finish_even_if_its_request_went_away() -> None:
    store, broker = FakeStore(stocked(A=10)), SlowBroker(0.3)
    allocator = Allocator(store, PROJECTOR, broker.send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]

    async def go() -> bool:
        request = asyncio.create_task(allocator.allocate([order("o1", A=2)]))
        await broker.started.wait()
        request.cancel()  # the client (or the server's shutdown) dropped the request
        return await allocator.drain(5)

    assert asyncio.run(go()) is True
    # Written to Redis and announced: the stream and the ledger will see the reservation.
    assert store.open_units("A", NOW_US) == 2
    assert [len(batch) for batch in broker.sends] == [1]


def test_shutdown_drain_is_bounded() -> None:
    store, broker = FakeStore(stocked(A=10)), SlowBroker(None)  # never acknowledges
    allocator = Allocator(store, PROJECTOR, broker.send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]

    async def go() -> bool:
        request = asyncio.create_task(allocator.allocate([order("o1", A=2)]))
        await broker.started.wait()
        drained = await allocator.drain(0.2)
        request.cancel()
        return drained

    assert asyncio.run(go()) is False


def test_a_release_meeting_a_replan_releases_what_the_replan_made() -> None:
    """DELETE reads the skus, then the order: a re-plan that replaced the order's claim just
    before is in both reads, so its new reservations are released too (none left open)."""
    inbound = InboundLine("PO", "L0", 5, 20_001, 0)
    store, broker = FakeStore({"A": SkuState("A", inbound=(inbound,))}), FakeBroker()
    allocator = Allocator(store, PROJECTOR, broker.send, "res", clock=lambda: NOW_US)  # type: ignore[arg-type]
    backorder = msgspec.structs.replace(order("o", A=3), backorder=True)
    ((placed, _),) = run(allocator, [backorder])[0]
    assert placed.lines[0].backordered == 3 and store.open_units("A", NOW_US) == 3

    def receipt_replanned() -> None:  # as the consumer would write it, meanwhile
        state = load_state("A", store.states["A"])
        state = msgspec.structs.replace(state, bins=(BinStock("L0", "B", "available", 2),))
        changes, _ = build_replanned(
            [state], {"A": store.versions["A"]}, PROJECTOR, NOW_US + 1, 7 * US_PER_DAY
        )
        assert changes.lines  # 2 converted, 1 still claimed
        store.states["A"] = changes.skus[0].state
        store.versions["A"] += 1
        store.merge_lines(changes)

    store.before_read.append(receipt_replanned)
    released = asyncio.run(allocator.release("o"))
    assert released is not None and released.status == "released"
    assert [a.quantity for a in released.lines[0].allocations] == [2]
    assert store.open_units("A", NOW_US) == 0
