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

Batch = tuple[Sequence[str | bytes], Sequence[str | bytes]]  # keys, values


class ImportRefused(Exception):
    """The file cannot be imported; nothing was produced. The message names the row and
    the column where it can."""


@dataclass(frozen=True)
class Plan:
    rows: int
    skus: int
    locations: tuple[str, ...]
    snapshots: int  # one per (sku, location) of the file
    digest: str  # of the file's bytes
    sorted_rows: pa.Table  # the checked rows by sku, location, bin, status (``_SORTED``)
    starts: npt.NDArray[np.int64]  # each snapshot's first row, then the number of rows

    def pairs(self) -> set[tuple[str, str]]:
        first = self.starts[:-1]
        skus = self.sorted_rows["sku"].take(first).to_pylist()
        locations = self.sorted_rows["location"].take(first).to_pylist()
        return set(zip(skus, locations, strict=True))


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
    """Read and check the whole file: its rows, sorted by sku, location, bin and status,
    stay in Arrow (``Plan.sorted_rows``: the text columns and the quantity as an integer),
    with the row where each (sku, location) begins (``Plan.starts``); ``snapshots`` writes
    their JSON.

    One DuckDB query reads and sorts the file. The rules are then checked on the Arrow
    buffers with numpy: a control character is a byte below 0x20 or 0x7f in UTF-8, an
    empty text has no bytes, a quantity of 1 to 10 digits fits an integer, a (bin, status)
    twice in a snapshot sits beside itself once sorted. What the bytes cannot settle (a
    text that begins with a space or a non-ASCII character, which ``trim`` may empty; over
    ``MAX_TEXT`` bytes; a quantity that is not plain digits) is asked of DuckDB for those
    rows only. Most files pass. Only one that fails is read again row by row (``_check``),
    to name its first bad row and column."""
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    with ThreadPoolExecutor(1, thread_name_prefix="atp-import-digest") as pool:
        digest = pool.submit(_digest, path)  # hashlib lets go of the GIL: beside DuckDB
        return _plan(path, digest)


def _plan(path: Path, digest: Future[str]) -> Plan:
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
        read = con.sql(f"SELECT {picked} FROM ({source}) ORDER BY {_SORTED}").to_arrow_table()
    except duckdb.Error:
        _refuse(con, source, picked)  # raises as the rows' check did
        raise
    columns = {name: _text(read[name]) for name in COLUMNS}
    amounts = _amounts(columns["quantity"])
    if amounts is None or _doubtful(con, columns):
        _refuse(con, source, picked)  # raises if a row breaks a rule
        amounts = _amounts_exactly(con, columns["quantity"])
    rows = len(amounts)
    sku, location = columns["sku"], columns["location"]
    # Row i > 0 begins a snapshot when its sku or location differs from row i - 1's.
    same_sku, same_location = _as_previous(sku), _as_previous(location)
    new = pc.invert(pc.and_(same_sku, same_location)).to_numpy(zero_copy_only=False)
    starts = np.concatenate(([0][:rows], 1 + np.flatnonzero(new), [rows])).astype(np.int64)
    repeated = pc.and_(
        pc.and_(same_sku, same_location),
        pc.and_(_as_previous(columns["bin"]), _as_previous(columns["status"])),
    )
    if pc.any(repeated).as_py() or (rows and np.diff(starts).max() > MAX_SNAPSHOT_BINS):
        _refuse(con, source, picked)
    skus = rows and 1 + int(pc.sum(pc.invert(same_sku)).as_py() or 0)
    found = pc.unique(location).to_pylist()
    sorted_rows = pa.table({**{c: columns[c] for c in TEXT_COLUMNS}, "quantity": amounts})
    return Plan(
        rows=rows,
        skus=skus,
        locations=tuple(sorted(found)),
        snapshots=len(starts) - 1,
        digest=digest.result(),
        sorted_rows=sorted_rows,
        starts=starts,
    )


def snapshots(found: Plan, as_of: datetime) -> Iterator[Batch]:
    """The plan's snapshots as batches of keys and JSON values, ordered by sku then
    location: a first batch of ``FIRST_PART`` snapshots (sending starts sooner), then
    batches of ``PART``; a thread writes the next batch while the caller sends this one.

    Arrow's string kernels write the JSON (they let go of the GIL, and cost a fraction of
    DuckDB's ``to_json``); DuckDB computes the event ids (sha256). The check refused
    control characters, so a text needs only its quotes and backslashes escaped, as
    ``to_json`` and msgspec do. ``_empty`` writes the same JSON for the zeroed ones; the
    consumer decodes both in tests/integration/test_import.py."""
    rows, starts = found.sorted_rows, found.starts
    prefix = f"{found.digest}\x1f{as_of.isoformat()}\x1f"
    occurred = msgspec.json.encode(as_of).decode()  # "...Z", as the decoder reads it
    ids = duckdb.connect(config={"threads": 1})  # small queries, on cores the sender uses

    def part(low: int, high: int) -> tuple[pa.Array, pa.Array]:
        begin, end = int(starts[low]), int(starts[high])
        some = rows.slice(begin, end - begin)
        first = pa.array(starts[low:high] - begin)
        sku = _small(some["sku"].take(first).combine_chunks())
        location = _small(some["location"].take(first).combine_chunks())
        ids.register("pairs", pa.table({"sku": sku, "location": location}))
        made = ids.sql(
            "SELECT substr(sha256(? || sku || chr(31) || location), 1, 32) AS id FROM pairs",
            params=[prefix],
        ).to_arrow_table()["id"]
        ids.unregister("pairs")
        one = pc.binary_join_element_wise(
            '{"bin":"', _json_text(_small(some["bin"].combine_chunks())),
            '","status":"', _json_text(_small(some["status"].combine_chunks())),
            '","quantity":', pc.cast(some["quantity"], pa.string()).combine_chunks(), "}", "",
        )  # fmt: skip
        offsets = pa.array(starts[low : high + 1] - begin, pa.int32())
        listed = pc.binary_join(pa.ListArray.from_arrays(offsets, one), ",")
        values = pc.binary_join_element_wise(
            '{"type":"stock_snapshot","event_id":"import-', made.combine_chunks(),
            f'","occurred_at":{occurred},"sku":"', _json_text(sku),
            '","location":"', _json_text(location), '","bins":[', listed, "]}", "",
        )  # fmt: skip
        return sku, values

    if found.snapshots == 0:
        yield [], []
        return
    ranges = _batches(starts)
    with ids, ThreadPoolExecutor(1, thread_name_prefix="atp-import") as pool:
        # The thread always has the next batches to write: it never waits for the sender.
        pending = deque(pool.submit(part, *r) for r in islice(ranges, AHEAD))
        while pending:
            skus, values = pending.popleft().result()
            pending.extend(pool.submit(part, *r) for r in islice(ranges, 1))
            # Python's strings are made here, by the thread that sends them: the writing
            # thread then needs the GIL only between Arrow's and DuckDB's calls.
            yield skus.to_pylist(), values.to_pylist()


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


_SORTED: Final = "sku, location, bin, status"  # a snapshot's rows together, its bins in order
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


def _as_previous(array: pa.Array) -> pa.BooleanArray:
    """For each row but the first, whether it holds the same text as the row before."""
    return pc.equal(array[1:], array[:-1])


def _doubtful(con: duckdb.DuckDBPyConnection, columns: dict[str, pa.Array]) -> bool:
    """Whether a text column may break a rule of ``_rules``: false only when none does."""
    for column in TEXT_COLUMNS:
        array = columns[column]
        if array.null_count:
            return True
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
