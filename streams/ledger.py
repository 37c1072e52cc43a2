"""The audit ledger: every applied and every dead-lettered event, as Parquet, queried by DuckDB.

Layout: ``<dir>/topic=<topic>/partition=<p>/<first>-<last>.parquet``. A partition has one
owner at a time, so two consumer instances never write the same file, and a file's name
says exactly which offsets it covers.

Ordering against Redis: a batch's ledger rows are *staged in Redis by the same script* that
writes its state and moves its offsets (:meth:`Ledger.stage`, one Arrow IPC value per
partition), so rows and offsets are never apart. About once a second the consumer moves the
staged rows of the partitions it owns into one file per partition (:meth:`Ledger.flush`),
then deletes them from Redis. A crash between the two leaves rows that are both staged and
in a file; the next flush skips rows at or below the partition's last file. So the files
plus the staged rows hold exactly the events below the offsets stored in Redis: none lost,
none twice. A stale owner's batch (after a rebalance) that begins below the stored offset is
staged under that offset, and its rows below it are dropped when read (:func:`staged_rows`),
so it cannot replace the rows staged before it. Writing a Parquet file per partition per
batch before the Redis write, as this module did first, cost about a millisecond per file,
most of a small batch's time.

Files past the offsets stored in Redis cannot arise this way; any found on assignment (from
an older version, or a stale owner) are removed (:meth:`Ledger.reconcile`).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA: Final = pa.schema(
    [
        ("event_id", pa.string()),
        ("type", pa.string()),
        ("sku", pa.string()),
        ("location", pa.string()),
        ("channel", pa.string()),
        ("quantity", pa.int64()),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("applied_at", pa.timestamp("us", tz="UTC")),
        ("source_topic", pa.string()),
        ("source_partition", pa.int32()),
        ("source_offset", pa.int64()),
        ("status", pa.string()),  # applied | applied_by_api | duplicate | dead_letter
        ("reason", pa.string()),
        ("raw", pa.binary()),
        ("correlation_id", pa.string()),
    ]
)
_SEPARATOR: Final = "\x1f"
_FILE = re.compile(r"^(\d{20})-(\d{20})\.parquet$")


# Where a message came from: (topic, partition, offset, raw value, correlation id). A plain
# tuple, built once per consumed message; sorting them orders a batch by partition and offset.
Source = tuple[str, int, int, bytes, "str | None"]


@dataclass
class LedgerColumns:
    """One batch's rows as columns, parallel to ``sources``; built without a row object per
    message (that cost more than writing the file)."""

    sources: list[Source]
    event_id: list[str | None]
    type: list[str | None]
    sku: list[str | None]
    location: list[str | None]
    channel: list[str | None]
    quantity: list[int | None]
    occurred_at_us: list[int | None]
    status: list[str]
    reason: list[str | None]


def astuple_columns(rows: LedgerColumns) -> tuple[list[Any], ...]:
    return tuple(getattr(rows, f.name) for f in fields(LedgerColumns))


def _write_file(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with pa.OSFile(str(temporary), "wb") as sink:
        pq.write_table(table, sink, compression="snappy")
    # Atomic against a process crash (rename). Not fsynced: like Redis with AOF everysec, a
    # power loss may lose the last moment of files; `atp verify` then reports the
    # partition's offsets as different, and the events are still in Kafka.
    os.replace(temporary, path)


@functools.cache
def _writers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="ledger")


def staged_field(topic: str, partition: int, first_offset: int) -> str:
    return f"{topic}{_SEPARATOR}{partition}{_SEPARATOR}{first_offset:020d}"


def parse_staged_field(name: str) -> tuple[str, int, int]:
    topic, partition, first = name.rsplit(_SEPARATOR, 2)
    return topic, int(partition), int(first)


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def from_ipc(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def staged_rows(name: str, blob: bytes) -> pa.Table:
    """A staged value's rows from the offset its field names on. The write script names the
    field after the offset stored before the batch when the batch began below it (a stale
    owner's batch); its rows below that offset were duplicates, and are elsewhere as applied."""
    table = from_ipc(blob)
    first = parse_staged_field(name)[2]
    if table.num_rows and table["source_offset"][0].as_py() < first:
        table = table.filter(pc.greater_equal(table["source_offset"], first))
    return table


def staged_table(staged: Mapping[str, bytes]) -> pa.Table | None:
    """Every staged row as one table (for queries before the next flush), or None."""
    if not staged:
        return None
    return pa.concat_tables([staged_rows(name, blob) for name, blob in sorted(staged.items())])


def _safe(name: str) -> str:
    # Topic names are [a-zA-Z0-9._-]; keep directory names to that.
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class Ledger:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory)
        # Highest offset in each partition's files, as this process last saw or wrote it:
        # listing a directory that gains a file a second on every flush would grow without
        # end. Forgotten when the partition is assigned again (another owner may have
        # written meanwhile).
        self._last: dict[tuple[str, int], int | None] = {}

    def partition_dir(self, topic: str, partition: int) -> Path:
        return self.root / f"topic={_safe(topic)}" / f"partition={partition}"

    def stage(self, rows: LedgerColumns, applied_at_us: int | None = None) -> dict[str, bytes]:
        """The batch's rows, ready to stage in Redis: field "topic\x1fpartition\x1ffirst
        offset" -> the partition's rows in offset order, as an Arrow IPC stream."""
        applied = applied_at_us if applied_at_us is not None else time.time_ns() // 1000
        sources = rows.sources
        if not sources:
            return {}
        # One Arrow table for the batch, put in (topic, partition, offset) order by Arrow and
        # sliced per partition: sorting and splitting the sources in Python cost more.
        table = pa.Table.from_pydict(
            {
                "event_id": rows.event_id,
                "type": rows.type,
                "sku": rows.sku,
                "location": rows.location,
                "channel": rows.channel,
                "quantity": rows.quantity,
                "occurred_at": rows.occurred_at_us,
                "applied_at": [applied] * len(sources),
                "source_topic": [s[0] for s in sources],
                "source_partition": [s[1] for s in sources],
                "source_offset": [s[2] for s in sources],
                "status": rows.status,
                "reason": rows.reason,
                "raw": [s[3] for s in sources],
                "correlation_id": [s[4] for s in sources],
            },
            schema=SCHEMA,
        )
        order = [
            ("source_topic", "ascending"),
            ("source_partition", "ascending"),
            ("source_offset", "ascending"),
        ]
        table = table.take(pc.sort_indices(table, sort_keys=order))
        topics = pc.dictionary_encode(table["source_topic"]).combine_chunks()
        topic_of = topics.indices.to_numpy().astype(np.int64)
        partitions = table["source_partition"].to_numpy().astype(np.int64)
        # A partition's rows end where the (topic, partition) pair changes.
        starts = [0, *(np.flatnonzero(np.diff((topic_of << 32) | partitions)) + 1).tolist()]
        ends = [*starts[1:], len(sources)]
        topic_names = topics.dictionary.to_pylist()
        offsets = table["source_offset"].to_numpy()
        staged = {}
        for start, end in zip(starts, ends, strict=True):
            field = staged_field(
                topic_names[topic_of[start]], int(partitions[start]), int(offsets[start])
            )
            staged[field] = to_ipc(table.slice(start, end - start))
        return staged

    def stage_by_shard(
        self, rows: LedgerColumns, shard_of: Callable[[str], int], applied_at_us: int | None = None
    ) -> dict[int, dict[str, bytes]]:
        """``stage`` per shard of the store (streams/shards.py): a row goes with its sku's
        shard, a dead letter (no sku) with shard 0. The store stages each shard's rows
        with that shard's part of the write."""
        shards = [0 if sku is None else shard_of(sku) for sku in rows.sku]
        if len(set(shards)) <= 1:
            staged = self.stage(rows, applied_at_us)
            return {shards[0]: staged} if staged else {}
        indices: dict[int, list[int]] = defaultdict(list)
        for i, shard in enumerate(shards):
            indices[shard].append(i)
        out = {}
        for shard, take in indices.items():
            part = LedgerColumns(*([column[i] for i in take] for column in astuple_columns(rows)))
            out[shard] = self.stage(part, applied_at_us)
        return out

    def flush(self, staged: Mapping[str, bytes]) -> list[str]:
        """Write staged rows to one file per partition; returns the fields now in files
        (to delete from Redis). Rows at or below a partition's last file are skipped: they
        are there already (a flush that crashed before deleting them from Redis)."""
        by_partition: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
        for name in staged:
            topic, partition, first = parse_staged_field(name)
            by_partition[(topic, partition)].append((first, name))
        files = []
        written: dict[tuple[str, int], int] = {}
        for (topic, partition), names in by_partition.items():
            names.sort()
            table = pa.concat_tables([staged_rows(name, staged[name]) for _, name in names])
            if len(names) > 1:
                # Fields of several shards, or renamed by the write script, may interleave.
                table = table.sort_by("source_offset")
            flushed = self.last_offset(topic, partition)
            if flushed is not None:
                table = table.filter(pc.greater(table["source_offset"], flushed))
            if table.num_rows:
                offsets = table["source_offset"]
                first, last = offsets[0].as_py(), offsets[-1].as_py()
                path = self.partition_dir(topic, partition) / f"{first:020d}-{last:020d}.parquet"
                files.append((path, table))
                written[(topic, partition)] = last
        # A file costs about a millisecond whatever its size: Arrow writes them with the
        # GIL released, so in parallel.
        if len(files) == 1:
            _write_file(*files[0])
        elif files:
            list(_writers().map(_write_file, *zip(*files, strict=True)))
        self._last.update(written)
        return list(staged)

    def last_offset(self, topic: str, partition: int) -> int | None:
        """The highest offset in the partition's files, or None without any."""
        if (topic, partition) in self._last:
            return self._last[(topic, partition)]
        directory = self.partition_dir(topic, partition)
        lasts = (
            [int(m.group(2)) for p in directory.iterdir() if (m := _FILE.match(p.name))]
            if directory.is_dir()
            else []
        )
        last = self._last[(topic, partition)] = max(lasts) if lasts else None
        return last

    def reconcile(self, topic: str, partition: int, stored_offset: int | None) -> int:
        """Remove files at or past the offset stored in Redis; returns how many.

        Flushes only write rows Redis already holds, so such files come from an older
        version of this module (files before the Redis write) or a stale owner; their
        messages will be consumed again from ``stored_offset``. Also forgets the
        partition's last flushed offset: another owner may have written since.
        """
        self._last.pop((topic, partition), None)
        directory = self.partition_dir(topic, partition)
        if not directory.is_dir():
            return 0
        removed = 0
        for path in directory.iterdir():
            if path.suffix == ".tmp":
                path.unlink(missing_ok=True)
                continue
            match = _FILE.match(path.name)
            if match and (stored_offset is None or int(match.group(2)) >= stored_offset):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def files(self) -> list[Path]:
        return sorted(self.root.glob("topic=*/partition=*/*.parquet"))

    def glob(self) -> str:
        return str(self.root / "topic=*" / "partition=*" / "*.parquet")


def view_sql(ledger: Ledger, name: str = "ledger") -> str:
    """The DuckDB view over every ledger file (empty files set handled by the caller)."""
    return (
        f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{ledger.glob()}', "
        "hive_partitioning = false, union_by_name = true)"
    )


def iter_rows_sql() -> str:
    # Within a partition, offset order is the order the consumer applied the events in.
    return (
        "SELECT source_topic, source_partition, source_offset, status, raw, applied_at "
        "FROM ledger ORDER BY source_topic, source_partition, source_offset"
    )
