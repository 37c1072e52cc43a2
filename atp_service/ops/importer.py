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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import duckdb
import msgspec
import redis
from confluent_kafka import Producer

from atp_service.config import Settings
from atp_service.store import keys
from streams.events import MAX_SNAPSHOT_BINS
from streams.kafka import Outgoing, ReliableProducer, producer_config
from streams.state import load_state

COLUMNS: Final = ("sku", "location", "bin", "status", "quantity")
TEXT_COLUMNS: Final = ("sku", "location", "bin", "status")
MAX_TEXT: Final = 200  # the events' identifier limit
MAX_QUANTITY: Final = 1_000_000_000
CHUNK: Final = 20_000  # snapshots per wait for the broker


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
    table: duckdb.DuckDBPyConnection  # holds the checked rows (table ``rows``)

    def pairs(self) -> set[tuple[str, str]]:
        found = self.table.execute("SELECT DISTINCT sku, location FROM rows").fetchall()
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
    """Read and check the whole file: its checked rows stay in DuckDB (``Plan.table``), and
    the plan counts what they make; ``events`` writes the snapshots from them."""
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
    con.execute(
        f"CREATE TEMP TABLE rows AS SELECT row_number() OVER () AS row, {picked} FROM ({source})"
    )
    _check(con)
    counted = con.execute(
        """SELECT count(*), count(DISTINCT sku), count(DISTINCT (sku, location)) FROM rows"""
    ).fetchone()
    total, skus, snapshots = (int(n) for n in counted or (0, 0, 0))
    found = con.execute("SELECT DISTINCT location FROM rows ORDER BY 1").fetchall()
    locations = tuple(location for (location,) in found)
    return Plan(total, skus, locations, snapshots, _digest(path), con)


def events(
    found: Plan, topic: str, as_of: datetime, zeroed: Iterable[tuple[str, str]] = ()
) -> Iterator[Outgoing]:
    """The snapshots of the plan, then the empty ones of ``zeroed`` (sku, location).

    DuckDB writes the plan's snapshots as JSON itself: building them in Python, a struct
    per bin, was most of the import's own time. ``_event`` writes the same JSON for the
    zeroed ones; the consumer decodes both in tests/integration/test_import.py."""
    stamp = as_of.isoformat()
    occurred = msgspec.json.encode(as_of).decode()  # "...Z", as the decoder reads it
    cursor = found.table.execute(
        """SELECT sku,
                  '{"type":"stock_snapshot","event_id":"import-'
                  || substr(sha256(? || chr(31) || ? || chr(31) || sku || chr(31) || location), 1, 32)
                  || '","occurred_at":' || ? || ',"sku":' || to_json(sku)
                  || ',"location":' || to_json(location) || ',"bins":'
                  || to_json(list({'bin': bin, 'status': status,
                                   'quantity': CAST(trim(quantity) AS BIGINT)} ORDER BY bin, status))
                  || '}'
           FROM rows GROUP BY sku, location ORDER BY sku, location""",
        [found.digest, stamp, occurred],
    )
    while batch := cursor.fetchmany(10_000):
        for sku, value in batch:
            yield Outgoing(topic, sku.encode(), value.encode())
    for sku, location in zeroed:
        yield _event(found.digest, stamp, as_of, topic, sku, location, [])


def held_elsewhere(found: Plan, holdings: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Of the (sku, location) pairs the store holds stock at, those at the file's locations
    that the file does not list: with ``--full`` their stock there becomes 0."""
    listed = found.pairs()
    locations = set(found.locations)
    return sorted(p for p in set(holdings) if p[1] in locations and p not in listed)


def holdings(client: redis.Redis, locations: Iterable[str]) -> list[tuple[str, str]]:
    """The (sku, location) pairs at ``locations`` where the store holds stock (a bin with
    a quantity other than 0)."""
    wanted = set(locations)
    out: list[tuple[str, str]] = []
    prefix = keys.sku_key("")[:-1]  # "atp:v1:{"
    batch: list[str] = []

    def read() -> None:
        pipe = client.pipeline(transaction=False)
        for sku in batch:
            pipe.hget(keys.sku_key(sku), keys.STATE_FIELD)
        for sku, raw in zip(batch, pipe.execute(), strict=True):
            state = load_state(sku, raw)
            out.extend(
                {(sku, b.location) for b in state.bins if b.quantity and b.location in wanted}
            )
        batch.clear()

    for key in client.scan_iter(match=prefix + "*}", count=1000, _type="HASH"):
        text = key.decode() if isinstance(key, bytes) else str(key)
        batch.append(text[len(prefix) : -1])
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


def run(
    settings: Settings,
    path: Path,
    as_of: datetime,
    full: bool = False,
    advance: Callable[[int, int], None] = lambda done, total: None,
) -> Summary:
    """What `atp import` does: plan, then produce in chunks, each acknowledged by the broker
    before the next (``advance`` is told how many of how many). Raises ImportRefused."""
    found = plan(path)
    zeroed: list[tuple[str, str]] = []
    if full:
        client = redis.Redis.from_url(settings.redis.url, socket_timeout=30)
        zeroed = held_elsewhere(found, holdings(client, found.locations))
    outgoing = list(events(found, settings.topics.movements, as_of, zeroed))
    sender = ReliableProducer(Producer(producer_config(settings.kafka.bootstrap)))
    for start in range(0, len(outgoing), CHUNK):
        sender.send_all(outgoing[start : start + CHUNK], timeout_s=120)
        advance(min(start + CHUNK, len(outgoing)), len(outgoing))
    return Summary(found.rows, found.skus, len(found.locations), len(outgoing), len(zeroed))


def _event(
    digest: str,
    stamp: str,
    as_of: datetime,
    topic: str,
    sku: str,
    location: str,
    bins: list[tuple[str, str, int]],
) -> Outgoing:
    ident = hashlib.sha256(f"{digest}\x1f{stamp}\x1f{sku}\x1f{location}".encode()).hexdigest()[:32]
    body = _Snapshot(f"import-{ident}", as_of, sku, location, [_Bin(*b) for b in bins])
    return Outgoing(topic, sku.encode(), _encode(body))


def _read(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    quoted = str(path).replace("'", "''")
    if path.suffix.lower() == ".parquet":
        return f"SELECT * FROM read_parquet('{quoted}')"
    return f"SELECT * FROM read_csv('{quoted}', header = true, all_varchar = true)"


def _check(con: duckdb.DuckDBPyConnection) -> None:
    """The first row the consumer would refuse, by row then column, as the refusal."""
    rules = []
    for column in TEXT_COLUMNS:
        rules += [
            (column, f"{column} IS NULL OR trim({column}) = ''", "is empty"),
            (column, f"length({column}) > {MAX_TEXT}", f"is longer than {MAX_TEXT} characters"),
            (
                column,
                f"regexp_matches({column}, '[\\x00-\\x1f\\x7f]')",
                "holds a control character",
            ),
        ]
    rules.append((
        "quantity",
        f"quantity IS NULL OR NOT regexp_full_match(trim(quantity), '[0-9]{{1,10}}') "
        f"OR CAST(trim(quantity) AS BIGINT) > {MAX_QUANTITY}",
        f"is not a whole number from 0 to {MAX_QUANTITY}",
    ))  # fmt: skip
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
