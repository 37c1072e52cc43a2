"""Kits (contract section 10): the figures, the definition rules, reads and allocation."""

from __future__ import annotations

import msgspec
import pytest

from allocation.kits import (
    Figures,
    KitComponent,
    KitDefinition,
    KitRefused,
    check_kit,
    kit_figures,
)
from allocation.network import Network
from atp_service.orders import OrderLine, OrderRequest, plan, plan_in_turn
from streams.changeset import build_changeset
from streams.consumer.batch import KIT_STOCK, decode_batch, ledger_rows
from streams.kits import with_kits
from streams.projector import Availability, Projector
from streams.state import US_PER_DAY, BinStock, InboundLine, Reservation, SkuState
from tests.channels import Channel
from tests.fakes import FakeMessage

NOW_US = 20_000 * US_PER_DAY + 3_600_000_000
TODAY = NOW_US // US_PER_DAY
PROJECTOR = Projector(
    Network.of(
        [
            Channel("web", 1, ("L1", "L2"), 0, 14, max_order_quantity=5),
            Channel("feed", 2, ("L1",), 2, 14),
        ]
    ),
    frozenset({"available"}),
    ({}, {}),
)
KIT = KitDefinition("K", (KitComponent("A", 2), KitComponent("B", 1)))


def stock(sku: str, *where: tuple[str, int], **kw: object) -> SkuState:
    bins = tuple(BinStock(loc, "X", "available", q) for loc, q in where)
    return SkuState(sku, bins=bins, **kw)  # type: ignore[arg-type]


def test_a_kit_is_its_scarcest_component_and_its_timeline_the_union_of_theirs() -> None:
    a = Figures([11, 4], [12, 5], [[(TODAY + 2, 15), (TODAY + 5, 21)], []])
    b = Figures([3, 9], [3, 10], [[(TODAY + 3, 8)], [(TODAY + 1, 12)]])
    kit = kit_figures([(a, 2), (b, 1)])
    assert kit.available_to_sell == [min(11 // 2, 3), min(4 // 2, 9)]
    assert kit.on_hand == [min(12 // 2, 3), min(5 // 2, 10)]
    # Before b's inbound arrives b holds the kit at 3; then a at 15 // 2, then 21 // 2 vs 8.
    assert kit.timeline[0] == [(TODAY + 2, 3), (TODAY + 3, 7), (TODAY + 5, 8)]
    assert kit.timeline[1] == [(TODAY + 1, min(4 // 2, 12))]


def test_definitions_follow_the_contract_rules() -> None:
    other = KitDefinition("K2", (KitComponent("C", 1),))
    check_kit(KIT, {"K2": other})
    check_kit(KIT, {"K": KIT})  # replacing itself
    for kit, others in [
        (KitDefinition("K", ()), {}),
        (KitDefinition("K", (KitComponent("A", 1), KitComponent("A", 2))), {}),
        (KitDefinition("K", (KitComponent("K2", 1),)), {"K2": other}),  # a component kit
        (KitDefinition("K", (KitComponent("K", 1),)), {}),  # itself
        (KitDefinition("C", (KitComponent("D", 1),)), {"K2": other}),  # a component of K2
        (KitDefinition("K", tuple(KitComponent(f"P{i}", 1) for i in range(51))), {}),
    ]:
        with pytest.raises(KitRefused):
            check_kit(kit, others)


def test_the_sweep_renders_a_kit_and_keeps_its_own_stock_out_of_it() -> None:
    components = {
        "A": stock("A", ("L1", 9), ("L2", 4)),
        "B": stock("B", ("L2", 5), inbound=(InboundLine("PO-1", "L1", 7, TODAY + 3, 0),)),
    }
    kit_state = stock("K", ("L1", 100))  # stock of the kit's own sku counts for nothing
    [kit] = with_kits([kit_state], {"K": KIT}, components, PROJECTOR, NOW_US)
    changes = build_changeset([kit], {}, PROJECTOR, NOW_US)
    docs = {
        name[2:]: msgspec.json.decode(doc, type=Availability)
        for name, doc in changes.skus[0].fields.items()
    }
    web, feed = docs["web"], docs["feed"]
    assert (web.available_to_sell, web.on_hand, web.reserved, web.safety_stock) == (5, 5, 0, 0)
    assert [(e.quantity) for e in web.atp] == [min(13 // 2, 12)]
    # feed sells from L1 only, where B has nothing, and keeps a safety stock of 2 per sku.
    assert (feed.available_to_sell, feed.on_hand) == (0, 0)
    assert changes.changed == {("web", "K"): 5}
    assert changes.skus[0].due_ms is None  # computed now: nothing to do until a change
    # A later write of the kit's record (an event for its own sku) keeps the documents
    # and asks the sweep to compute them again.
    later = build_changeset([kit], {}, PROJECTOR, NOW_US + 1_000)
    assert later.skus[0].fields == changes.skus[0].fields
    assert later.skus[0].due_ms is not None
    # No longer a kit: back to the sku's own stock.
    [plain] = with_kits([kit], {}, components, PROJECTOR, NOW_US)
    assert plain.kit is None


def order(order_id: str, channel: str, **lines: int) -> OrderRequest:
    return OrderRequest(
        order_id, channel, [OrderLine(str(i), sku, q) for i, (sku, q) in enumerate(lines.items())]
    )


def test_a_kit_line_takes_whole_kits_capped_in_kits() -> None:
    states = {
        "A": stock("A", ("L1", 9), ("L2", 4)),
        "B": stock("B", ("L2", 8), reservations=(Reservation("R", True, "web", "L2", 1),)),
    }
    planned = plan([order("o1", "web", K=9)], states, PROJECTOR, NOW_US, kits={"K": KIT})
    [line] = planned.results[0].lines
    # 13 // 2 = 6 kits of A, 7 of B; web caps a line at 5 (here, 5 kits).
    assert (line.sku, line.quantity, line.unfilled, line.allocations) == ("K", 9, 4, [])
    assert line.components is not None
    assert [(c.sku, c.quantity, c.unfilled) for c in line.components] == [
        ("A", 18, 8),
        ("B", 9, 4),
    ]
    assert [sum(a.quantity for a in c.allocations) for c in line.components] == [10, 5]
    assert {h.sku for h in planned.held[0]} == {"A", "B"}

    # In turn, a second order gets what the first left: 1 kit (A: 3 left, B: 2 left).
    two = plan_in_turn(
        [order("o1", "web", K=5), order("o2", "web", K=5)], states, PROJECTOR, NOW_US, {"K": KIT}
    )
    assert [r.lines[0].unfilled for r in two.results] == [0, 4]


def test_a_kit_line_never_reserves_part_of_a_kit() -> None:
    # B short: nothing of A is reserved either, even with backorders allowed.
    states = {"A": stock("A", ("L1", 10)), "B": stock("B")}
    request = msgspec.structs.replace(order("o1", "web", K=2, A=1), backorder=True)
    planned = plan([request], states, PROJECTOR, NOW_US, kits={"K": KIT})
    kit_line, a_line = planned.results[0].lines
    assert kit_line.unfilled == 2 and kit_line.components is not None
    assert all(c.allocations == [] and c.backordered == 0 for c in kit_line.components)
    assert sum(a.quantity for a in a_line.allocations) == 1
    assert [h.sku for h in planned.held[0]] == ["A"]


def test_the_ledger_says_a_kits_own_stock_changed_nothing() -> None:
    receipt = {"type": "bin_movement", "event_id": "m-1", "occurred_at": "2026-12-07T10:00:00Z",
               "location": "L1", "quantity": 5, "from_bin": None, "from_status": None,
               "to_bin": "A-1", "to_status": "available"}  # fmt: skip
    messages = [
        FakeMessage("moves", 0, n, msgspec.json.encode({**receipt, "event_id": f"m-{n}", "sku": sku}),
                    sku.encode())
        for n, sku in enumerate(["K", "A"])
    ]  # fmt: skip
    batch = decode_batch(messages, max_message_bytes=10_000, known_channels=frozenset({"web"}),
                         dead_letter_topic="dead", generation=0)  # fmt: skip
    rows = ledger_rows(batch, [], frozenset({"K"}))
    assert rows.status == ["applied", "applied"]
    assert rows.reason == [KIT_STOCK, None]
