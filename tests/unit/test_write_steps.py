"""A consumer's write in steps (atp_service/store/write_plan.py, ``steps``): no script
writes more than its share of skus, every part of the write goes with its sku's step (an
order's notice with a step of a sku it has lines on), and only the last step moves the
offsets and stages the ledger rows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from atp_service.store import keys
from atp_service.store.write_plan import split, steps
from streams.backorders import line_field
from streams.changeset import (
    ChangeSet,
    SkuWrite,
    order_update_field,
    outbox_field,
    outbox_kind,
    reservation_field,
)


def change_set(n_skus: int) -> ChangeSet:
    skus = [f"SKU-{n}" for n in range(n_skus)]
    changes = ChangeSet(
        offsets={"t\x1f0": 42}, ledger={0: {"t\x1f0\x1f00000000000000000040": b"rows"}}
    )
    for sku in skus:
        changes.skus.append(SkuWrite(sku, 1, b"state", None, {"p:web": b"{}"}, [f"e-{sku}"]))
        changes.outbox[outbox_field("web", sku)] = b"event"
        changes.outbox[reservation_field(sku, f"r-{sku}")] = b"reservation"
        changes.changed["web", sku] = 3
        changes.marked[sku] = [f"atp-alloc:{sku}"]
        # An order has lines on three skus; each sku has lines of one order.
        order_id = f"O-{int(sku.removeprefix('SKU-')) // 3}"
        changes.lines[sku] = {line_field(order_id, sku): b"record"}
        changes.outbox[order_update_field(order_id)] = b"notice"
    changes.outbox[order_update_field("O-none")] = b"notice"  # no line in this write
    return changes


def orders_of(piece: ChangeSet) -> set[str]:
    return {line.partition("\x1f")[0] for records in piece.lines.values() for line in records}


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=12))
def test_every_part_goes_with_its_skus_step_and_the_last_moves_the_offsets(
    n_skus: int, step_skus: int
) -> None:
    changes = change_set(n_skus)
    out = steps([(0, changes)], step_skus)
    if n_skus <= step_skus:
        assert out == [(0, changes, "")]
        return
    assert [step for _, _, step in out] == ["p"] * (len(out) - 1) + [f"f{len(out) - 1}"]
    assert all(len(piece.skus) <= step_skus for _, piece, _ in out)
    assert [w.sku for _, piece, _ in out for w in piece.skus] == [w.sku for w in changes.skus]
    for _, piece, step in out:
        mine = {w.sku for w in piece.skus}
        assert {sku for _, sku in piece.changed} == mine
        assert set(piece.marked) == mine
        assert set(piece.lines) == mine
        last = step != "p"
        assert piece.offsets == (changes.offsets if last else {})
        assert piece.ledger == (changes.ledger if last else {})
        # A step that lands carries the notices of the orders its skus' lines are of: cut
        # short after it, nothing plans those skus again to make them.
        notices = {key for name in piece.outbox for kind, key in [outbox_kind(name)] if kind == "u"}
        assert notices - {"O-none"} == orders_of(piece)
        assert ("O-none" in notices) == last
        assert (piece.outbox_id == changes.outbox_id) == last
    merged: dict[str, bytes] = {}
    for _, piece, _ in out:
        merged.update(piece.outbox)
    assert merged == changes.outbox


def test_a_write_of_orders_or_capacity_counts_stays_whole() -> None:
    changes = change_set(10)
    changes.puts.append(("atp:v3:order:O-1", "nx", b"{}"))
    assert steps([(0, changes)], 3) == [(0, changes, "")]


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=2, max_value=8))
def test_a_notice_goes_to_every_shard_of_its_orders_lines(n_skus: int, shards: int) -> None:
    changes = change_set(n_skus)
    changes.ledger = {}
    parts = split(changes, keys.Layout(shards))
    for shard, part in parts:
        notices = {key for name in part.outbox for kind, key in [outbox_kind(name)] if kind == "u"}
        assert notices - {"O-none"} == orders_of(part), shard
    assert sum(order_update_field("O-none") in part.outbox for _, part in parts) == 1
