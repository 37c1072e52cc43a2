"""Moving staged ledger rows to files: each message's row reaches the files once."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from streams.ledger import Ledger, LedgerColumns, from_ipc, parse_staged_field, staged_field


def rows(offsets: range) -> LedgerColumns:
    n = len(offsets)
    return LedgerColumns(
        sources=[("t.movements", 0, o, b"{}", None) for o in offsets],
        event_id=[f"e-{o}" for o in offsets], type=["bin_movement"] * n, sku=["S"] * n,
        location=["L"] * n, channel=[None] * n, quantity=[1] * n,
        occurred_at_us=[1_000_000] * n, status=["applied"] * n, reason=[None] * n,
    )  # fmt: skip


def offsets_in_files(root: Path) -> list[int]:
    return sorted(
        o for f in root.rglob("*.parquet") for o in pq.read_table(f)["source_offset"].to_pylist()
    )


def test_rows_already_in_a_file_are_not_written_again(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    first = ledger.stage(rows(range(0, 3)))
    ledger.flush(first)
    # The clean-up of the first move did not happen: its rows are staged again beside new ones.
    again = {**first, **ledger.stage(rows(range(3, 5)))}
    assert sorted(ledger.flush(again)) == sorted(again)
    assert offsets_in_files(tmp_path) == [0, 1, 2, 3, 4]


def test_another_process_sees_the_files_written_before_it(tmp_path: Path) -> None:
    staged = Ledger(tmp_path).stage(rows(range(0, 4)))
    Ledger(tmp_path).flush(staged)
    Ledger(tmp_path).flush(staged)  # a restarted consumer, with the rows still staged
    assert offsets_in_files(tmp_path) == [0, 1, 2, 3]


def test_a_partition_assigned_again_is_read_from_its_files(tmp_path: Path) -> None:
    ours, theirs = Ledger(tmp_path), Ledger(tmp_path)
    ours.flush(ours.stage(rows(range(0, 2))))
    theirs.flush(theirs.stage(rows(range(2, 4))))  # another owner moved on meanwhile
    ours.reconcile("t.movements", 0, 4)  # what assignment does
    ours.flush(ours.stage(rows(range(2, 6))))
    assert offsets_in_files(tmp_path) == [0, 1, 2, 3, 4, 5]


def test_a_batch_from_several_partitions_is_staged_per_partition_in_offset_order() -> None:
    # As consumed: partitions interleaved, and the dead letters' rows appended at the end.
    order = [
        ("t.b", 1, 7),
        ("t.a", 0, 3),
        ("t.b", 1, 8),
        ("t.a", 2, 5),
        ("t.a", 0, 4),
        ("t.a", 0, 2),
    ]
    n = len(order)
    batch = LedgerColumns(
        sources=[(topic, partition, offset, b"{}", None) for topic, partition, offset in order],
        event_id=[f"e-{o}" for _, _, o in order], type=["bin_movement"] * n, sku=["S"] * n,
        location=["L"] * n, channel=[None] * n, quantity=[1] * n,
        occurred_at_us=[1_000_000] * n, status=["applied"] * n, reason=[None] * n,
    )  # fmt: skip
    staged = Ledger("unused").stage(batch)
    assert {
        parse_staged_field(name): from_ipc(blob)["source_offset"].to_pylist()
        for name, blob in staged.items()
    } == {
        ("t.a", 0, 2): [2, 3, 4],
        ("t.a", 2, 5): [5],
        ("t.b", 1, 7): [7, 8],
    }
    assert [r["event_id"] for r in from_ipc(staged[staged_field("t.a", 0, 2)]).to_pylist()] == [
        "e-2",
        "e-3",
        "e-4",
    ]
