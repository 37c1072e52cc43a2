"""`atp import FILE`: a stock export into `stock_snapshot` events (contract section 8).

The file (CSV with a header line, or Parquet) has the columns sku, location, bin, status and
quantity; other columns are ignored. DuckDB reads it, and every row is checked before anything
is produced: a row the consumer would refuse stops the import with the row (1-based, header
excluded) and the column, and nothing reaches the broker. Then one snapshot per (sku,
location) goes to the movements topic, keyed by sku, with an event_id derived from the
file's content, the snapshots' time and the (sku, location): importing the same file with
the same time again changes nothing.

With ``full``, the file is the whole stock of the locations it names: every sku the store
holds stock of at such a location that the file does not list gets an empty snapshot.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any, Final

import duckdb
import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import redis
from confluent_kafka import KafkaError, Message, Producer

from atp_service.config import Settings
from atp_service.runtime import sync_redis
from atp_service.store import keys
from streams.events import MAX_SNAPSHOT_BINS
from streams.kafka import Outgoing, ReliableProducer, producer_config
from streams.state import load_state

log = logging.getLogger(__name__)

COLUMNS: Final = ("sku", "location", "bin", "status", "quantity")
TEXT_COLUMNS: Final = ("sku", "location", "bin", "status")
MAX_TEXT: Final = 200  # the events' identifier limit
MAX_QUANTITY: Final = 1_000_000_000
PART: Final = 50_000  # snapshots per batch written and sent
PART_ROWS: Final = 500_000  # and at most this many rows (a batch's JSON stays below 2 GB)
FIRST_PART: Final = 5_000  # the first batch: the broker's first messages come sooner
AHEAD: Final = 3  # batches written ahead of the one being sent
SAMPLE_ROWS: Final = 1 << 16  # a text column's first rows, which choose how it is ranked
MOSTLY_DISTINCT: Final = 0.9  # of them distinct (in random order: 300,000 texts or more)

Batch = tuple[Sequence[str | bytes], Sequence[str | bytes]]  # keys, values


class ImportRefused(Exception):
    """The file cannot be imported; nothing was produced. The message names the row and
    the column where it can."""


@dataclass(frozen=True)
class Ranked:
    texts: pa.Array  # distinct, in byte order
    ranks: npt.NDArray[np.int64]  # each row's text: its index in ``texts``


@dataclass(frozen=True)
class Plan:
    rows: int
    skus: int
    locations: tuple[str, ...]
    snapshots: int  # one per (sku, location) of the file
    digest: str  # of the file's bytes
    sku: pa.Array  # each snapshot's, in the order of the snapshots
    location: pa.Array
    # The checked rows in order: bin and status as ranks among their distinct texts.
    bin: Ranked
    status: Ranked
    quantity: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]  # each snapshot's first row, then the number of rows

    def pairs(self) -> set[tuple[str, str]]:
        return set(zip(self.sku.to_pylist(), self.location.to_pylist(), strict=True))


class _Bin(msgspec.Struct):
    bin: str
    status: str
    quantity: int


class _Snapshot(msgspec.Struct, tag="stock_snapshot", tag_field="type"):
    event_id: str
    occurred_at: datetime
    sku: str
    location: str
    bins: list[_Bin]


_encode: Final = msgspec.json.Encoder().encode


def plan(path: Path) -> Plan:
    """Read and check the whole file: the snapshots' skus and locations and the rows' bins,
    ordered by sku, location, bin and status, stay in Arrow (``Plan``); ``snapshots`` writes
    their JSON.

    One DuckDB query reads the file as it is, and each text column becomes its distinct
    texts and each row's rank among them (``_ranks``). The rules are checked on the
    distinct texts' bytes with numpy: a control character is a byte below 0x20 or 0x7f in
    UTF-8, an empty text has no bytes, a quantity of 1 to 10 digits fits an integer. What
    the bytes cannot settle (a text that begins with a space or a non-ASCII character,
    which ``trim`` may empty; over ``MAX_TEXT`` bytes; a quantity that is not plain digits)
    is asked of DuckDB for those texts only. The rows are sorted by their ranks (``_order``):
    integers sort for a fraction of what DuckDB's ORDER BY over the texts cost. A (bin,
    status) twice in a snapshot sits beside itself once sorted. Most files pass. Only one
    that fails is read again row by row (``_check``), to name its first bad row and
    column."""
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    with ThreadPoolExecutor(2, thread_name_prefix="atp-import-plan") as pool:
        digest = pool.submit(_digest, path)  # hashlib lets go of the GIL: beside DuckDB
        return _plan(path, digest, pool)


def _plan(path: Path, digest: Future[str], pool: ThreadPoolExecutor) -> Plan:
    con = duckdb.connect()
    source = _read(con, path)
    try:
        header = con.execute(f"SELECT * FROM ({source}) LIMIT 0").description or []
        con.fetchall()  # nothing: done with the result (``_doubtful`` registers tables)
    except duckdb.Error as exc:
        raise ImportRefused(f"{path}: not a CSV or Parquet file DuckDB can read ({exc})") from None
    names = {str(column[0]).lower(): str(column[0]) for column in header}
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ImportRefused(f"{path}: missing column(s) {', '.join(missing)}")
    picked = ", ".join(f'CAST("{names[c]}" AS VARCHAR) AS {c}' for c in COLUMNS)
    try:
        read = con.sql(f"SELECT {picked} FROM ({source})").to_arrow_table()
    except duckdb.Error:
        _refuse(con, source, picked)  # raises as the rows' check did
        raise
    columns = {name: _text(read[name]) for name in COLUMNS}
    del read
    if any(columns[c].null_count for c in TEXT_COLUMNS):
        _refuse(con, source, picked)  # raises: a null is empty
    # Arrow's kernels let go of the GIL: two columns at a time.
    ranked = [pool.submit(_ranks, columns[c], con.cursor()) for c in TEXT_COLUMNS]
    amounts = _amounts(columns["quantity"])
    texts, ranks = zip(*(r.result() for r in ranked), strict=True)
    if amounts is None or _doubtful(con, texts):
        _refuse(con, source, picked)  # raises if a row breaks a rule
        amounts = _amounts_exactly(con, columns["quantity"])
    order = _order(ranks, [len(t) for t in texts])
    sku, location, bin_, status = (rank[order] for rank in ranks)  # the sorted rows' ranks
    rows = len(order)
    # Row i > 0 begins a snapshot when its sku or location differs from row i - 1's.
    same = (sku[1:] == sku[:-1]) & (location[1:] == location[:-1])
    starts = np.concatenate(([0][:rows], 1 + np.flatnonzero(~same), [rows])).astype(np.int64)
    repeated = same & (bin_[1:] == bin_[:-1]) & (status[1:] == status[:-1])
    if repeated.any() or (rows and np.diff(starts).max() > MAX_SNAPSHOT_BINS):
        _refuse(con, source, picked)
    first = starts[:-1]
    sku_texts, location_texts, bin_texts, status_texts = texts
    return Plan(
        rows=rows,
        skus=len(sku_texts),
        locations=tuple(sorted(location_texts.to_pylist())),
        snapshots=len(first),
        digest=digest.result(),
        sku=sku_texts.take(sku[first]),
        location=location_texts.take(location[first]),
        bin=Ranked(bin_texts, bin_),
        status=Ranked(status_texts, status),
        quantity=amounts.to_numpy(zero_copy_only=False)[order],
        starts=starts,
    )


def snapshots(found: Plan, as_of: datetime) -> Iterator[Batch]:
    """The plan's snapshots as batches of keys and JSON values, ordered by sku then
    location: a first batch of ``FIRST_PART`` snapshots (sending starts sooner), then
    batches of ``PART``; a thread writes the next batch while the caller sends this one.

    The event ids are computed first, all at once (``_event_ids``). Arrow's string kernels
    write the JSON (they let go of the GIL, and cost a fraction of DuckDB's ``to_json``).
    The check refused control characters, so a text needs only its quotes and backslashes
    escaped, as ``to_json`` and msgspec do. ``_empty`` writes the same JSON for the zeroed
    ones; the consumer decodes both in tests/integration/test_import.py."""
    if found.snapshots == 0:
        yield [], []
        return
    starts = found.starts
    occurred = msgspec.json.encode(as_of).decode()  # "...Z", as the decoder reads it
    ids = _event_ids(found, f"{found.digest}\x1f{as_of.isoformat()}\x1f")
    # A bin's JSON up to its quantity, from one piece per distinct bin and one per status.
    bins = pc.binary_join_element_wise('{"bin":"', _json_text(found.bin.texts), '","status":"', "")
    statuses = pc.binary_join_element_wise(_json_text(found.status.texts), '","quantity":', "")

    def part(low: int, high: int) -> tuple[pa.Array, pa.Array]:
        begin, end = int(starts[low]), int(starts[high])
        sku, location = _small(found.sku[low:high]), _small(found.location[low:high])
        one = pc.binary_join_element_wise(
            _small(bins.take(found.bin.ranks[begin:end])),
            _small(statuses.take(found.status.ranks[begin:end])),
            pc.cast(pa.array(found.quantity[begin:end]), pa.string()), "}", "",
        )  # fmt: skip
        offsets = pa.array(starts[low : high + 1] - begin, pa.int32())
        listed = pc.binary_join(pa.ListArray.from_arrays(offsets, one), ",")
        values = pc.binary_join_element_wise(
            '{"type":"stock_snapshot","event_id":"import-', ids[low:high],
            f'","occurred_at":{occurred},"sku":"', _json_text(sku),
            '","location":"', _json_text(location), '","bins":[', listed, "]}", "",
        )  # fmt: skip
        return sku, values

    ranges = _batches(starts)
    with ThreadPoolExecutor(1, thread_name_prefix="atp-import") as pool:
        # The thread always has the next batches to write: it never waits for the sender.
        pending = deque(pool.submit(part, *r) for r in islice(ranges, AHEAD))
        while pending:
            skus, values = pending.popleft().result()
            pending.extend(pool.submit(part, *r) for r in islice(ranges, 1))
            # Python's strings are made here, by the thread that sends them: the writing
            # thread then needs the GIL only between Arrow's calls.
            yield skus.to_pylist(), values.to_pylist()


def _event_ids(found: Plan, prefix: str) -> pa.Array:
    """Each snapshot's event id: the first 32 hex digits of the sha256 of ``prefix``, its
    sku, 0x1f and its location.

    DuckDB hashes them all in one query on every core, before the first batch is written:
    the sending that follows leaves the writing thread the JSON alone, beside librdkafka's
    thread and the broker. Python's hashlib costs as much: its calls per id cost more than
    the hashing."""
    with duckdb.connect() as con:
        con.register("pairs", pa.table({"sku": found.sku, "location": found.location}))
        made = con.sql(
            "SELECT substr(sha256(? || sku || chr(31) || location), 1, 32) AS id FROM pairs",
            params=[prefix],
        ).to_arrow_table()["id"]
    return _small(made.combine_chunks())


def _batches(starts: npt.NDArray[np.int64]) -> Iterator[tuple[int, int]]:
    """The snapshots of each batch, as (first, end): ``FIRST_PART`` then ``PART``
    snapshots, but no more than ``PART_ROWS`` rows unless one snapshot has more."""
    low, size, total = 0, FIRST_PART, len(starts) - 1
    while low < total:
        high = min(low + size, total)
        fits = int(np.searchsorted(starts, starts[low] + PART_ROWS, side="right")) - 1
        high = max(low + 1, min(high, fits))
        yield low, high
        low, size = high, PART


def held_elsewhere(found: Plan, holdings: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Of the (sku, location) pairs the store holds stock at, those at the file's locations
    that the file does not list: with ``--full`` their stock there becomes 0."""
    listed = found.pairs()
    locations = set(found.locations)
    return sorted(p for p in set(holdings) if p[1] in locations and p not in listed)


def holdings(
    client: redis.Redis, locations: Iterable[str], layout: keys.Layout = keys.SINGLE
) -> list[tuple[str, str]]:
    """The (sku, location) pairs at ``locations`` where the store holds stock (a bin with
    a quantity other than 0)."""
    wanted = set(locations)
    out: list[tuple[str, str]] = []
    batch: list[str] = []

    def read() -> None:
        pipe = client.pipeline(transaction=False)
        for sku in batch:
            pipe.hget(layout.sku_key(sku), keys.STATE_FIELD)
        for sku, raw in zip(batch, pipe.execute(), strict=True):
            state = load_state(sku, raw)
            out.extend(
                {(sku, b.location) for b in state.bins if b.quantity and b.location in wanted}
            )
        batch.clear()

    for key in client.scan_iter(match=keys.SKU_PATTERN, count=1000, _type="HASH"):
        sku = keys.sku_of(key)
        if sku is None:
            continue
        batch.append(sku)
        if len(batch) >= 1000:
            read()
    if batch:
        read()
    return out


@dataclass(frozen=True)
class Summary:
    rows: int
    skus: int
    locations: int
    snapshots: int
    zeroed: int


def import_producer_config(bootstrap: str) -> dict[str, Any]:
    """The movements producer's settings (idempotent, acks=all, murmur2 partitioner) with
    these for a bulk load; the benchmark's "producer alone" uses them too."""
    return {
        **producer_config(bootstrap),
        # Nothing waits on one snapshot: fuller batches, fewer requests.
        "linger.ms": 20,
        "batch.size": 4_000_000,
        "batch.num.messages": 100_000,
        # Snapshots repeat their field names and ids: lz4 makes a batch about 5 times
        # smaller, and the broker (Tansu) spent a third of the CPU on it (500,000
        # snapshots: 0.16 s against 0.52 s uncompressed), CPU a small machine shares.
        "compression.type": "lz4",
        # Only a failure is worth a Python call per message (see Sender).
        "delivery.report.only.error": True,
        # Connect at creation, not at the first message (see Sender).
        "enable.sparse.connections": False,
    }


class Sender:
    """Produce (key, value) batches to one topic and return once the broker acknowledged
    every message.

    A bulk load cannot afford ReliableProducer's closure and callback per message: the
    producer reports only failures (``delivery.report.only.error``), so once ``flush``
    drains the queue, every message not reported failed was acknowledged; the failed ones
    go through ReliableProducer, which produces them again until acknowledged.

    Create it a moment before sending (the import does so before reading the file). An
    idempotent producer needs a producer id before its first message goes out; librdkafka
    asks on a 500 ms timer when no broker is connected yet, so a producer connecting only
    for its first message waited 0.5 to 1 s. Connected at creation
    (``enable.sparse.connections`` off), it asks as soon as the connection is up, a few
    milliseconds later. Connecting is not producing: nothing goes out before ``send``."""

    def __init__(self, bootstrap: str) -> None:
        self.failed: list[Outgoing] = []
        self.producer = Producer({**import_producer_config(bootstrap), "on_delivery": self._report})

    def _report(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(Outgoing(msg.topic() or "", msg.key(), msg.value() or b""))

    def send(
        self,
        topic: str,
        batches: Iterable[Batch],
        total: int,
        advance: Callable[[int, int], None] = lambda done, total: None,
    ) -> None:
        producer = self.producer
        produce = producer.produce
        produced = 0
        for skus, values in batches:
            for key, value in zip(skus, values, strict=True):
                try:
                    produce(topic, value, key)
                except BufferError:  # the queue is full: wait for room
                    while True:
                        producer.poll(0.01)
                        try:
                            produce(topic, value, key)
                            break
                        except BufferError:
                            continue
            produced += len(values)
            producer.poll(0)
            advance(max(0, produced - len(producer) - len(self.failed)), total)
        while producer.flush(0.2):
            advance(max(0, produced - len(producer) - len(self.failed)), total)
        if self.failed:
            log.warning("producing %d snapshots again", len(self.failed))
            failed, self.failed = self.failed, []
            ReliableProducer(producer).send_all(failed, timeout_s=120)
        advance(produced, total)


def run(
    settings: Settings,
    path: Path,
    as_of: datetime,
    full: bool = False,
    advance: Callable[[int, int], None] = lambda done, total: None,
) -> Summary:
    """What `atp import` does: plan, then produce every snapshot and wait until the broker
    acknowledged all (``advance`` is told how many of how many). Raises ImportRefused."""
    sender = Sender(settings.kafka.bootstrap)  # connects while DuckDB reads the file
    found = plan(path)
    zeroed: list[tuple[str, str]] = []
    if full:
        client = sync_redis(settings)
        layout = keys.Layout(settings.redis.shard_count)
        zeroed = held_elsewhere(found, holdings(client, found.locations, layout))
    stamp = as_of.isoformat()
    empty = [_empty(found.digest, stamp, as_of, sku, location) for sku, location in zeroed]
    total = found.snapshots + len(empty)
    last: Batch = ([key for key, _ in empty], [value for _, value in empty])
    sender.send(settings.topics.movements, chain(snapshots(found, as_of), [last]), total, advance)
    return Summary(found.rows, found.skus, len(found.locations), total, len(zeroed))


def _empty(
    digest: str, stamp: str, as_of: datetime, sku: str, location: str
) -> tuple[bytes, bytes]:
    """The key and the JSON of an empty snapshot, as ``snapshots`` writes a full one."""
    ident = hashlib.sha256(f"{digest}\x1f{stamp}\x1f{sku}\x1f{location}".encode()).hexdigest()[:32]
    return sku.encode(), _encode(_Snapshot(f"import-{ident}", as_of, sku, location, []))


def _read(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    quoted = str(path).replace("'", "''")
    if path.suffix.lower() == ".parquet":
        return f"SELECT * FROM read_parquet('{quoted}')"
    return f"SELECT * FROM read_csv('{quoted}', header = true, all_varchar = true)"


_CONTROL: Final = "'[\\x00-\\x1f\\x7f]'"
_BAD_QUANTITY: Final = (
    f"quantity IS NULL OR NOT regexp_full_match(trim(quantity), '[0-9]{{1,10}}') "
    f"OR TRY_CAST(trim(quantity) AS BIGINT) > {MAX_QUANTITY}"
)


def _rules() -> list[tuple[str, str, str]]:
    """(column, SQL condition of a bad row, what is wrong), in the order of the columns."""
    rules = []
    for column in TEXT_COLUMNS:
        rules += [
            (column, f"{column} IS NULL OR trim({column}) = ''", "is empty"),
            (column, f"length({column}) > {MAX_TEXT}", f"is longer than {MAX_TEXT} characters"),
            (column, f"regexp_matches({column}, {_CONTROL})", "holds a control character"),
        ]
    rules.append(("quantity", _BAD_QUANTITY, f"is not a whole number from 0 to {MAX_QUANTITY}"))
    return rules


def _refuse(con: duckdb.DuckDBPyConnection, source: str, picked: str) -> None:
    """The file broke a rule: read it again with the rows' numbers and raise the refusal
    that names the first bad row and column (``_check``)."""
    con.execute(
        f"CREATE TEMP TABLE rows AS SELECT row_number() OVER () AS row, {picked} FROM ({source})"
    )
    _check(con)
    con.execute("DROP TABLE rows")


def _check(con: duckdb.DuckDBPyConnection) -> None:
    """The first row the consumer would refuse, by row then column, as the refusal."""
    rules = _rules()
    worst: tuple[int, int, str] | None = None
    for column, condition, what in rules:
        hit = con.execute(f"SELECT min(row) FROM rows WHERE {condition}").fetchone()
        if hit and hit[0] is not None:
            row = int(hit[0])
            index = COLUMNS.index(column)
            if worst is None or (row, index) < worst[:2]:
                worst = (row, index, f"row {row}, column {column}: {what}")
    if worst is not None:
        raise ImportRefused(worst[2])
    repeated = con.execute(
        """SELECT min(row), max(row) FROM rows GROUP BY sku, location, bin, status
           HAVING count(*) > 1 ORDER BY 2 LIMIT 1"""
    ).fetchone()
    if repeated:
        raise ImportRefused(
            f"row {repeated[1]}, column bin: the same sku, location, bin and status as row {repeated[0]}"
        )
    crowded = con.execute(
        f"""SELECT sku, location, max(row) FROM rows GROUP BY sku, location
            HAVING count(*) > {MAX_SNAPSHOT_BINS} ORDER BY 3 LIMIT 1"""
    ).fetchone()
    if crowded:
        raise ImportRefused(
            f"row {crowded[2]}, column bin: more than {MAX_SNAPSHOT_BINS} bins of sku "
            f"{crowded[0]!r} at {crowded[1]!r}"
        )


_SMALL_BYTES: Final = 1 << 30  # a column of more text gets 64-bit offsets


def _text(column: pa.ChunkedArray) -> pa.Array:
    """One Arrow string array of the column (DuckDB hands a table over in batches): 64-bit
    offsets only when its text needs them."""
    wide = column.nbytes >= _SMALL_BYTES or column.type not in (pa.string(), pa.large_string())
    return column.cast(pa.large_string() if wide else pa.string()).combine_chunks()


def _small(array: pa.Array) -> pa.Array:
    """A batch's strings with 32-bit offsets (a batch holds at most PART_ROWS rows), as the
    JSON's constant parts have."""
    return array if array.type == pa.string() else array.cast(pa.string())


def _bytes(array: pa.Array) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """A string array's offsets (from 0) and the UTF-8 bytes they point into."""
    buffers = array.buffers()
    width = np.int32 if array.type == pa.string() else np.int64
    offsets = np.frombuffer(buffers[1], width)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.empty(0, np.uint8)
    return (offsets - offsets[0]).astype(np.int64), data[offsets[0] : offsets[-1]]


def _ranks(
    array: pa.Array, con: duckdb.DuckDBPyConnection
) -> tuple[pa.Array, npt.NDArray[np.int64]]:
    """The column's distinct texts in byte order (UTF-8: code point order, as DuckDB and
    Python sort them), and each row's rank among them. ``con``: this call's own DuckDB
    cursor, closed here.

    Arrow's dictionary encoding (a hash table) and a sort of the distinct texts cost little
    while the texts repeat; with mostly distinct texts both cost more than DuckDB's sort of
    the column. So a column whose first ``SAMPLE_ROWS`` rows are mostly distinct
    (``MOSTLY_DISTINCT``) is sorted by DuckDB instead, and ranked by comparing each sorted
    text with the one before."""
    with con:
        distinct = pc.count_distinct(array[:SAMPLE_ROWS]).as_py()
        if distinct > MOSTLY_DISTINCT * min(len(array), SAMPLE_ROWS):
            table = pa.table({"text": array, "row": np.arange(len(array))})
            by_text = con.from_arrow(table).order("text").select("row").to_arrow_table()
            return _ranks_of_sorted(array, by_text["row"].to_numpy())
    encoded = pc.dictionary_encode(array)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return encoded.dictionary.take(order), rank[encoded.indices.to_numpy()]


def _ranks_of_sorted(
    array: pa.Array, by_text: npt.NDArray[np.int64]
) -> tuple[pa.Array, npt.NDArray[np.int64]]:
    """``_ranks`` from the rows in the order of their texts."""
    texts = array.take(by_text)
    differs = pc.not_equal(texts[1:], texts[:-1]).to_numpy(zero_copy_only=False)
    first = np.concatenate(([True][: len(array)], differs))
    rank = np.empty(len(array), np.int64)
    rank[by_text] = np.cumsum(first) - 1
    return texts.filter(pa.array(first)), rank


def _order(ranks: Sequence[npt.NDArray[np.int64]], sizes: Sequence[int]) -> npt.NDArray[np.int64]:
    """The rows sorted by their ranks, the first column's first: one argsort of the ranks
    combined into an integer when they fit in 63 bits. Stable (timsort): a file already
    sorted or grouped sorts in a few milliseconds."""
    if math.prod(max(size, 1) for size in sizes) < 1 << 63:
        key = np.zeros(len(ranks[0]), np.int64)
        for rank, size in zip(ranks, sizes, strict=True):
            key *= size
            key += rank
        return np.argsort(key, kind="stable")
    return np.lexsort(ranks[::-1])


def _doubtful(con: duckdb.DuckDBPyConnection, texts: Iterable[pa.Array]) -> bool:
    """Whether a text may break a rule of ``_rules`` (``texts``: each column's distinct
    texts, none null): false only when none does."""
    for array in texts:
        offsets, data = _bytes(array)
        lengths = np.diff(offsets)
        if len(array) and lengths.min() == 0:  # empty
            return True
        if ((data < 0x20) | (data == 0x7F)).any():  # a control character (UTF-8: one byte)
            return True
        leading = data[offsets[:-1]]
        # Only a text that begins with a space, ASCII or not, can trim to nothing; only one
        # of more than MAX_TEXT bytes can have more than MAX_TEXT characters: ask DuckDB.
        unsure = (leading == 0x20) | (leading >= 0x80) | (lengths > MAX_TEXT)
        if unsure.any():
            con.register("unsure", pa.table({"text": array.filter(pa.array(unsure))}))
            [(hit,)] = con.execute(
                f"SELECT bool_or(trim(text) = '' OR length(text) > {MAX_TEXT}) FROM unsure"
            ).fetchall()
            con.unregister("unsure")
            if hit:
                return True
    return False


def _amounts(quantity: pa.Array) -> pa.Array | None:
    """The quantities as integers when every one is 1 to 10 digits and at most
    MAX_QUANTITY (then it passes ``_BAD_QUANTITY``); None when one may not."""
    if quantity.null_count:
        return None
    offsets, data = _bytes(quantity)
    lengths = np.diff(offsets)
    if len(quantity) and (lengths.min() < 1 or lengths.max() > 10):
        return None
    if ((data < 0x30) | (data > 0x39)).any():  # other than 0-9
        return None
    amounts = pc.cast(quantity, pa.int64())
    if len(quantity) and pc.max(amounts).as_py() > MAX_QUANTITY:
        return None
    return amounts


def _amounts_exactly(con: duckdb.DuckDBPyConnection, quantity: pa.Array) -> pa.Array:
    """The quantities of checked rows as the check reads them (trimmed by DuckDB)."""
    con.register("checked", pa.table({"quantity": quantity}))
    read = con.sql("SELECT CAST(trim(quantity) AS BIGINT) AS q FROM checked").to_arrow_table()
    con.unregister("checked")
    return read["q"].combine_chunks()


def _json_text(array: pa.Array) -> pa.Array:
    """The texts as in a JSON string, quotes left out: ``\\`` and ``"`` escaped (the
    check refused control characters, the only others JSON escapes)."""
    _, data = _bytes(array)
    if not ((data == 0x22) | (data == 0x5C)).any():
        return array
    return pc.replace_substring(pc.replace_substring(array, "\\", "\\\\"), '"', '\\"')


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
