"""The ledger flusher (streams/consumer/ledger_flush.py) against the in-memory store: the rows
a batch's write staged reach Parquet files, only for the partitions this consumer owns, and
leave the store only once they are in a file."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streams.changeset import ChangeSet
from streams.consumer import ledger_flush
from streams.consumer.ledger_flush import LedgerFlusher
from streams.consumer.options import offset_field
from streams.ledger import Ledger, LedgerColumns, parse_staged_field
from tests.fakes import MemoryStore, StoreDown

MOVES = "wms.bin-movements"


def rows(partition: int, offsets: range) -> LedgerColumns:
    n = len(offsets)
    return LedgerColumns(
        sources=[(MOVES, partition, o, b"{}", None) for o in offsets],
        event_id=[f"e-{partition}-{o}" for o in offsets], type=["bin_movement"] * n,
        sku=["SKU-1"] * n, location=["DC-EAST"] * n, channel=[None] * n, quantity=[1] * n,
        occurred_at_us=[1_000_000] * n, status=["applied"] * n, reason=[None] * n,
    )  # fmt: skip


def write_batch(store: MemoryStore, ledger: Ledger, partition: int, offsets: range) -> None:
    """A batch's write: its offsets move and its ledger rows are staged, together."""
    changes = ChangeSet(
        offsets={offset_field(MOVES, partition): offsets.stop},
        ledger={0: ledger.stage(rows(partition, offsets))},
    )
    assert store.write(changes, 0) == []


def in_files(root: Path, partition: int) -> list[int]:
    files = (root / f"topic={MOVES}" / f"partition={partition}").glob("*.parquet")
    return sorted(o for f in files for o in pq.read_table(f)["source_offset"].to_pylist())


def staged_partitions(store: MemoryStore) -> set[int]:
    return {parse_staged_field(name)[1] for name in store.staged}


def owning(store: MemoryStore, ledger: Ledger, *partitions: int) -> LedgerFlusher:
    flusher = LedgerFlusher(store, ledger)
    flusher.owned = frozenset((MOVES, p) for p in partitions)
    return flusher


def test_staged_rows_of_owned_partitions_move_to_files_and_leave_the_store(
    tmp_path: Path,
) -> None:
    store = MemoryStore(initialized="test")
    ledger = Ledger(tmp_path)
    write_batch(store, ledger, 0, range(0, 3))
    write_batch(store, ledger, 0, range(3, 5))
    flusher = owning(store, ledger, 0)
    assert flusher.flush() == 2
    assert in_files(tmp_path, 0) == [0, 1, 2, 3, 4]
    assert store.staged == {}
    assert flusher.flush() == 0 and in_files(tmp_path, 0) == [0, 1, 2, 3, 4]


def test_rows_of_a_partition_owned_by_another_consumer_are_left_to_it(tmp_path: Path) -> None:
    """A partition's rows are moved only by its owner, so two never write the same file."""
    store = MemoryStore(initialized="test")
    ledger = Ledger(tmp_path)
    write_batch(store, ledger, 0, range(0, 2))
    write_batch(store, ledger, 1, range(0, 2))
    owning(store, ledger, 0).flush()
    assert in_files(tmp_path, 0) == [0, 1] and in_files(tmp_path, 1) == []
    assert staged_partitions(store) == {1}


def test_rows_stay_staged_when_the_file_cannot_be_written(tmp_path: Path) -> None:
    store = MemoryStore(initialized="test")
    blocked = tmp_path / "ledger"
    blocked.write_text("a file where the ledger's directory should be")
    write_batch(store, Ledger(tmp_path), 0, range(0, 3))
    staged = dict(store.staged)
    with pytest.raises(NotADirectoryError):
        owning(store, Ledger(blocked), 0).flush()
    assert store.staged == staged  # nothing dropped that is in no file


class _DropFailsOnce(MemoryStore):
    """The store goes away between the file write and dropping the staged rows."""

    def __init__(self) -> None:
        super().__init__(initialized="test")
        self.drops_refused = 0

    def drop_staged_ledger(self, names: object) -> None:
        if not self.drops_refused:
            self.drops_refused += 1
            raise StoreDown("gone before the drop")
        super().drop_staged_ledger(names)  # type: ignore[arg-type]


def test_rows_in_a_file_but_still_staged_reach_the_files_once(tmp_path: Path) -> None:
    store = _DropFailsOnce()
    ledger = Ledger(tmp_path)
    write_batch(store, ledger, 0, range(0, 3))
    flusher = owning(store, ledger, 0)
    with pytest.raises(StoreDown):
        flusher.flush()
    assert in_files(tmp_path, 0) == [0, 1, 2] and staged_partitions(store) == {0}
    write_batch(store, ledger, 0, range(3, 4))
    # A restarted consumer too: it knows the files only from the directory.
    owning(store, Ledger(tmp_path), 0).flush()
    assert in_files(tmp_path, 0) == [0, 1, 2, 3]
    assert store.staged == {}


def test_stopping_moves_what_is_staged_one_last_time(tmp_path: Path) -> None:
    store = MemoryStore(initialized="test")
    ledger = Ledger(tmp_path)
    flusher = owning(store, ledger, 0)
    flusher.start()
    write_batch(store, ledger, 0, range(0, 3))
    flusher.stop()
    assert in_files(tmp_path, 0) == [0, 1, 2] and store.staged == {}


def test_stopping_with_the_store_down_leaves_the_rows_staged(tmp_path: Path) -> None:
    store = MemoryStore(initialized="test")
    ledger = Ledger(tmp_path)
    write_batch(store, ledger, 0, range(0, 3))
    flusher = owning(store, ledger, 0)
    flusher.start()
    store.down = True
    flusher.stop()  # logs; does not raise
    store.down = False
    assert staged_partitions(store) == {0} and in_files(tmp_path, 0) == []


def test_the_flusher_thread_keeps_going_through_a_store_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_flush, "FLUSH_INTERVAL_S", 0.01)
    store = MemoryStore(initialized="test")
    ledger = Ledger(tmp_path)
    flusher = owning(store, ledger, 0)
    store.down = True
    flusher.start()
    try:
        time.sleep(0.05)  # a few rounds fail
        store.down = False
        write_batch(store, ledger, 0, range(0, 3))
        deadline = time.monotonic() + 2.0
        while store.staged and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.staged == {} and in_files(tmp_path, 0) == [0, 1, 2]
    finally:
        flusher.stop()
