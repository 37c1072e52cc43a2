"""`atp import FILE`: a stock export into `stock_snapshot` events (contract section 8).

The file (CSV with a header line, or Parquet) has the columns sku, location, bin, status and
quantity; other columns are ignored. DuckDB reads it and checks every row before anything is
produced: a row the consumer would refuse stops the import with the row (1-based, header
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any, Final

import duckdb
import msgspec
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
PART: Final = 50_000  # snapshots per DuckDB query (and per batch sent)


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
    table: duckdb.DuckDBPyConnection  # holds the checked snapshots (table ``snapshots``)

    def pairs(self) -> set[tuple[str, str]]:
        found = self.table.execute("SELECT sku, location FROM snapshots").fetchall()
        return {(sku, location) for sku, location in found}


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
    """Read and check the whole file: its rows, grouped into one sorted list of bins per
    (sku, location), stay in DuckDB (``Plan.table``, table ``snapshots``, ordered by sku then
    location), and the plan counts what they make; ``snapshots`` writes their JSON.

    One query reads the file, groups it and says whether any row breaks a rule; a second
    looks at the groups (their sku and location, a (bin, status) twice, too many bins).
    Most files pass. Only one that fails is read again row by row (``_check``), to name its
    first bad row and column."""
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    con = duckdb.connect()
    source = _read(con, path)
    try:
        header = con.execute(f"SELECT * FROM ({source}) LIMIT 0").description or []
    except duckdb.Error as exc:
        raise ImportRefused(f"{path}: not a CSV or Parquet file DuckDB can read ({exc})") from None
    names = {str(column[0]).lower(): str(column[0]) for column in header}
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ImportRefused(f"{path}: missing column(s) {', '.join(missing)}")
    picked = ", ".join(f'CAST("{names[c]}" AS VARCHAR) AS {c}' for c in COLUMNS)
    # The rules of ``_check`` on bin, status and quantity, for each row; those on sku and
    # location are checked once per group below. TRY_CAST: a bad quantity is found here.
    rules = [condition for column, condition, _ in _rules() if column in ("bin", "status")]
    rules = [c for c in rules if not c.startswith("regexp_matches")]
    rules += [f"regexp_matches(concat(bin, status), {_CONTROL})", _BAD_QUANTITY]
    try:
        con.execute(
            f"""CREATE TEMP TABLE snapshots AS
                SELECT sku, location,
                       list_sort(list({{'bin': bin, 'status': status,
                                       'quantity': TRY_CAST(trim(quantity) AS BIGINT)}})) AS bins,
                       count(*) AS n, bool_or({" OR ".join(f"({c})" for c in rules)}) AS bad
                FROM (SELECT {picked} FROM ({source}))
                GROUP BY sku, location ORDER BY sku, location"""
        )
    except duckdb.Error:
        _refuse(con, source, picked)  # raises as the rows' check did
        raise
    keys = [condition for column, condition, _ in _rules() if column in ("sku", "location")]
    keys = [c for c in keys if not c.startswith("regexp_matches")]
    keys.append(f"regexp_matches(concat(sku, location), {_CONTROL})")
    # A (bin, status) twice in a group: the sorted bins hold them side by side.
    twice = """list_bool_or(list_transform(range(1, n), lambda i:
                 bins[i].bin = bins[i + 1].bin AND bins[i].status = bins[i + 1].status))"""
    counted = con.execute(
        f"""SELECT count(*), coalesce(sum(n), 0), count(DISTINCT sku),
                   coalesce(bool_or(bad OR {" OR ".join(f"({c})" for c in keys)}
                                    OR n > {MAX_SNAPSHOT_BINS} OR coalesce({twice}, FALSE)),
                            FALSE)
            FROM snapshots"""
    ).fetchone()
    snapshots, total, skus, broken = counted or (0, 0, 0, False)
    if broken:
        _refuse(con, source, picked)
    found = con.execute("SELECT DISTINCT location FROM snapshots ORDER BY 1").fetchall()
    locations = tuple(location for (location,) in found)
    return Plan(int(total), int(skus), locations, int(snapshots), _digest(path), con)


def snapshots(found: Plan, as_of: datetime) -> Iterator[list[tuple[str, str]]]:
    """The plan's snapshots as (key, JSON) strings, in parts of ``PART``, ordered by sku
    then location; a thread has DuckDB write the next part while the caller sends this one.

    DuckDB writes the JSON itself: building it in Python, a struct per bin, was most of the
    import's own time. ``plan`` sorted each (sku, location)'s list of bins (``list_sort``),
    which gives the order by bin then status that an ordered aggregate would, for half its
    time: the check makes (bin, status) unique within a snapshot and never null. ``_empty``
    writes the same JSON for the zeroed ones; the consumer decodes both in
    tests/integration/test_import.py."""
    stamp = as_of.isoformat()
    occurred = msgspec.json.encode(as_of).decode()  # "...Z", as the decoder reads it
    con = found.table

    def part(low: int) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = con.execute(
            """SELECT sku,
                  '{"type":"stock_snapshot","event_id":"import-'
                  || substr(sha256(? || chr(31) || ? || chr(31) || sku || chr(31) || location), 1, 32)
                  || '","occurred_at":' || ? || ',"sku":' || to_json(sku)
                  || ',"location":' || to_json(location) || ',"bins":' || to_json(bins) || '}'
               FROM snapshots WHERE rowid >= ? AND rowid < ?""",  # in the table's order
            [found.digest, stamp, occurred, low, low + PART],
        ).fetchall()
        return rows

    starts = list(range(0, max(1, found.snapshots), PART))
    with ThreadPoolExecutor(1, thread_name_prefix="atp-import") as pool:
        pending = pool.submit(part, starts[0])
        for low in starts[1:]:
            done = pending.result()
            pending = pool.submit(part, low)
            yield done
        yield pending.result()


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
        batches: Iterable[Sequence[tuple[str | bytes, str | bytes]]],
        total: int,
        advance: Callable[[int, int], None] = lambda done, total: None,
    ) -> None:
        producer = self.producer
        produce = producer.produce
        produced = 0
        for batch in batches:
            for key, value in batch:
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
            produced += len(batch)
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
    sender.send(settings.topics.movements, chain(snapshots(found, as_of), [empty]), total, advance)
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


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
