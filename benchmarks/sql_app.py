"""Compute-on-read baseline: the single-sku answer computed per request by SQL over raw rows.

This is how Saleor (``warehouse_stock`` rows per variant and warehouse, reservations with a
``reserved_until``, channel -> warehouses) and Medusa (``inventory_level`` per item and
location, ``reservation_item``, sales channel -> stock locations) answer "how many can I
sell": one query that aggregates the raw rows of the sku every time it is asked. The read
benchmark serves it under ``atp serve``'s own granian settings and worker count
(``benchmarks.serve``), beside our read, on the same route and with the same JSON.

Tables (``SCHEMA``), loaded by ``load()`` with binary COPY, then indexed and analyzed:

- ``stock(sku, location, quantity)``: one row per (sku, location), the sellable on-hand
  there (the WMS integration sums the bins in a sellable status; Saleor's ``Stock.quantity``).
  Primary key (sku, location), a btree whose leading column also serves lookups by sku.
- ``reservations(reservation_id, sku, location, quantity, expires_at)``: open reservations
  (open quantity; a released or fully shipped one is deleted, as Saleor and Medusa do);
  btree on (sku, location).
- ``inbound(inbound_id, sku, location, quantity, eta)``: open purchase-order lines (a line at
  quantity 0 is closed); btree on (sku).
- ``channels(name, safety_stock, inbound_horizon_days)``, ``channel_locations(channel,
  location, position)``, ``safety_stock_overrides(channel, sku, quantity)``: the
  configuration (the benchmark's five channels) and per-sku overrides (primary keys).

What ``QUERY`` computes, for ``$1`` = channel c and ``$2`` = sku s, mapped to contract
section 1 (every sum only over the locations L_c of the channel):

- ``on_hand``  = sum of ``stock.quantity``                     = sum over L_c of on_hand(s,l)
- ``reserved`` = sum of ``reservations.quantity`` whose ``expires_at`` is null or after
  now()                                                        = sum over L_c of reserved(s,l)
- ``safety_stock`` = the override of (c, s) if any, else the channel default
- ``available_to_sell`` = max(0, on_hand - reserved - safety_stock)
- ``atp``: per distinct due day d of the open inbound lines at L_c with eta <= today + H_c
  (an eta in the past is due today, today = the UTC date), ascending, the cumulative
  max(0, on_hand - reserved + inbound due by d - safety_stock)
- ``as_of``: now, since the value is computed at read time.

An unknown channel is 404; a sku without rows is 200 with zeros, the channel's safety stock
and ``"atp": []``, as the contract says. The answer is encoded with the same msgspec
``Availability`` struct as the service's stored documents, so the fields and their order
are the same. Not modelled (the raw rows do not carry them): bins and stock statuses (rows
hold sellable stock only), cycle counts, event deduplication. No API key check (like the
other baselines; wrk sends the header anyway).

Configuration of the app (environment, set by the read benchmark): ``ATP_BENCH_SQL_DSN``
and ``ATP_BENCH_SQL_POOL`` (asyncpg pool size per worker, default 16).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import asyncpg
import msgspec
from litestar import Litestar, Response, get
from litestar.datastructures import State

from streams.projector import AtpEntry, Availability, format_as_of

SCHEMA: Final = """
DROP TABLE IF EXISTS stock, reservations, inbound, channels, channel_locations,
    safety_stock_overrides;
CREATE TABLE channels (
    name text PRIMARY KEY,
    safety_stock integer NOT NULL,
    inbound_horizon_days integer NOT NULL
);
CREATE TABLE channel_locations (
    channel text NOT NULL,
    location text NOT NULL,
    position integer NOT NULL,
    PRIMARY KEY (channel, location)
);
CREATE TABLE safety_stock_overrides (
    channel text NOT NULL,
    sku text NOT NULL,
    quantity integer NOT NULL,
    PRIMARY KEY (channel, sku)
);
CREATE TABLE stock (
    sku text NOT NULL,
    location text NOT NULL,
    quantity integer NOT NULL
);
CREATE TABLE reservations (
    reservation_id text NOT NULL,
    sku text NOT NULL,
    location text NOT NULL,
    quantity integer NOT NULL,
    expires_at timestamptz
);
CREATE TABLE inbound (
    inbound_id text NOT NULL,
    sku text NOT NULL,
    location text NOT NULL,
    quantity integer NOT NULL,
    eta date NOT NULL
);
"""

# Built after COPY (faster than maintaining them while loading), as a real app has them.
INDEXES: Final = """
ALTER TABLE stock ADD PRIMARY KEY (sku, location);
ALTER TABLE reservations ADD PRIMARY KEY (reservation_id);
CREATE INDEX reservations_sku_location ON reservations (sku, location);
ALTER TABLE inbound ADD PRIMARY KEY (inbound_id);
CREATE INDEX inbound_sku ON inbound (sku);
"""

QUERY: Final = """
WITH ch AS (
    SELECT c.name,
           coalesce(o.quantity, c.safety_stock) AS safety_stock,
           c.inbound_horizon_days AS horizon,
           (now() AT TIME ZONE 'UTC')::date AS today
    FROM channels c
    LEFT JOIN safety_stock_overrides o ON o.channel = c.name AND o.sku = $2
    WHERE c.name = $1
), locs AS (
    SELECT location FROM channel_locations WHERE channel = $1
), totals AS MATERIALIZED (  -- computed once, used by every column below
    SELECT
        (SELECT coalesce(sum(s.quantity), 0)::bigint FROM stock s
          WHERE s.sku = $2 AND s.location IN (SELECT location FROM locs)) AS on_hand,
        (SELECT coalesce(sum(r.quantity), 0)::bigint FROM reservations r
          WHERE r.sku = $2 AND r.location IN (SELECT location FROM locs)
            AND (r.expires_at IS NULL OR r.expires_at > now())) AS reserved
), due AS (
    SELECT greatest(i.eta, ch.today) AS day, sum(i.quantity)::bigint AS quantity
    FROM inbound i, ch
    WHERE i.sku = $2 AND i.location IN (SELECT location FROM locs)
      AND i.quantity > 0 AND i.eta <= ch.today + ch.horizon
    GROUP BY 1
), timeline AS (
    SELECT day, (sum(quantity) OVER (ORDER BY day))::bigint AS due_by FROM due
)
SELECT ch.safety_stock, t.on_hand, t.reserved,
       greatest(0, t.on_hand - t.reserved - ch.safety_stock) AS available_to_sell,
       coalesce((SELECT array_agg(day ORDER BY day) FROM timeline), '{}') AS days,
       coalesce((SELECT array_agg(greatest(0, t.on_hand - t.reserved + due_by - ch.safety_stock)
                                  ORDER BY day) FROM timeline), '{}') AS atp
FROM ch, totals t
"""

_encoder: Final = msgspec.json.Encoder()
NOT_FOUND: Final = b'{"title":"Not Found","status":404,"detail":"unknown channel"}'


# -- the app -------------------------------------------------------------------------------


@get("/healthz", sync_to_thread=False)
def healthz() -> Response[bytes]:
    return Response(content=b'{"status":"ok"}', media_type="application/json")


@get("/v1/availability/{channel:str}/{sku:str}")
async def computed(channel: str, sku: str, state: State) -> Response[bytes]:
    row = await state.pool.fetchrow(QUERY, channel, sku)
    if row is None:
        return Response(content=NOT_FOUND, status_code=404, media_type="application/problem+json")
    answer = Availability(
        channel=channel,
        sku=sku,
        available_to_sell=row["available_to_sell"],
        on_hand=row["on_hand"],
        reserved=row["reserved"],
        safety_stock=row["safety_stock"],
        atp=[AtpEntry(d.isoformat(), q) for d, q in zip(row["days"], row["atp"], strict=True)],
        as_of=format_as_of(time.time_ns() // 1000),
    )
    return Response(content=_encoder.encode(answer), media_type="application/json")


def sql_app() -> Litestar:
    dsn = os.environ["ATP_BENCH_SQL_DSN"]
    size = int(os.environ.get("ATP_BENCH_SQL_POOL", "16"))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    return Litestar(
        route_handlers=[healthz, computed], lifespan=[lifespan], debug=False, openapi_config=None
    )


# -- the data --------------------------------------------------------------------------------


@dataclass
class Rows:
    """The generated raw rows (records in table column order)."""

    channels: list[tuple[str, int, int]]
    channel_locations: list[tuple[str, str, int]]
    overrides: list[tuple[str, str, int]] = field(default_factory=list)
    stock: list[tuple[str, str, int]] = field(default_factory=list)
    reservations: list[tuple[str, str, str, int, datetime | None]] = field(default_factory=list)
    inbound: list[tuple[str, str, str, int, date]] = field(default_factory=list)


def generate(
    skus: Sequence[str],
    locations: Sequence[str],
    channels: Sequence[tuple[str, Sequence[str], int, int]],
    *,
    locations_per_sku: int,
    reservations: int,
    inbound: int,
    overrides: int,
    now: datetime,
    seed: int = 17,
) -> Rows:
    """Deterministic raw rows: ``len(skus) * locations_per_sku`` stock rows, the given
    numbers of reservations (70% without expiry, 15% expired, 15% expiring later), inbound
    lines (10% closed, etas from 5 days ago to 40 days ahead) and safety-stock overrides.

    ``channels``: (name, locations in preference order, safety stock, horizon days).
    """
    rng = random.Random(seed)
    rows = Rows(
        channels=[(name, safety, horizon) for name, _, safety, horizon in channels],
        channel_locations=[
            (name, loc, k) for name, locs, _, _ in channels for k, loc in enumerate(locs)
        ],
    )
    held: list[list[str]] = []
    every = list(locations)
    for sku in skus:
        where = rng.sample(every, locations_per_sku)
        held.append(where)
        rows.stock.extend((sku, loc, rng.randint(0, 200)) for loc in where)
    n = len(skus)
    for k in range(reservations):
        i = rng.randrange(n)
        roll = rng.random()
        expires: datetime | None = None
        if roll < 0.15:
            expires = now - timedelta(seconds=rng.randint(3600, 86400))
        elif roll < 0.30:
            expires = now + timedelta(seconds=rng.randint(3600, 86400))
        rows.reservations.append(
            (f"R-{k}", skus[i], rng.choice(held[i]), rng.randint(1, 5), expires)
        )
    today = now.date()
    for k in range(inbound):
        quantity = 0 if rng.random() < 0.1 else rng.randint(10, 100)
        eta = today + timedelta(days=rng.randint(-5, 40))
        rows.inbound.append((f"PO-{k}:1", rng.choice(skus), rng.choice(every), quantity, eta))
    names = [name for name, _, _, _ in channels]
    seen: set[tuple[str, str]] = set()
    while len(rows.overrides) < min(overrides, n * len(names)):
        key = (rng.choice(names), rng.choice(skus))
        if key not in seen:
            seen.add(key)
            rows.overrides.append((*key, rng.randint(0, 20)))
    return rows


async def load(dsn: str, rows: Rows) -> dict[str, int]:
    """Create the tables, COPY the rows in, build the indexes, VACUUM ANALYZE; row counts."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        tables: dict[str, list[Any]] = {
            "channels": rows.channels, "channel_locations": rows.channel_locations,
            "safety_stock_overrides": rows.overrides, "stock": rows.stock,
            "reservations": rows.reservations, "inbound": rows.inbound,
        }  # fmt: skip
        for table, records in tables.items():
            await conn.copy_records_to_table(table, records=records)
        await conn.execute(INDEXES)
        await conn.execute("VACUUM ANALYZE")
        counts = {}
        for table in tables:
            counts[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return counts
    finally:
        await conn.close()


def expected(
    rows: Rows, channel: str, skus: Sequence[str], now: datetime
) -> dict[str, dict[str, Any]]:
    """The contract's formulas in plain Python over the same rows (the check of ``QUERY``);
    sku -> the answer without ``as_of``."""
    wanted = set(skus)
    name, safety_default, horizon = next(c for c in rows.channels if c[0] == channel)
    locs = {loc for ch, loc, _ in rows.channel_locations if ch == channel}
    overrides = {sku: q for ch, sku, q in rows.overrides if ch == channel and sku in wanted}
    on_hand = dict.fromkeys(wanted, 0)
    reserved = dict.fromkeys(wanted, 0)
    due: dict[str, dict[date, int]] = {s: {} for s in wanted}
    for sku, loc, q in rows.stock:
        if sku in wanted and loc in locs:
            on_hand[sku] += q
    for _, sku, loc, q, expires in rows.reservations:
        if sku in wanted and loc in locs and (expires is None or expires > now):
            reserved[sku] += q
    today = now.astimezone(UTC).date()
    for _, sku, loc, q, eta in rows.inbound:
        if sku in wanted and loc in locs and q > 0 and eta <= today + timedelta(days=horizon):
            day = max(eta, today)
            due[sku][day] = due[sku].get(day, 0) + q
    out: dict[str, dict[str, Any]] = {}
    for sku in skus:
        safety = overrides.get(sku, safety_default)
        net = on_hand[sku] - reserved[sku]
        atp, running = [], 0
        for day in sorted(due[sku]):
            running += due[sku][day]
            atp.append({"date": day.isoformat(), "quantity": max(0, net + running - safety)})
        out[sku] = {
            "channel": name, "sku": sku, "available_to_sell": max(0, net - safety),
            "on_hand": on_hand[sku], "reserved": reserved[sku], "safety_stock": safety, "atp": atp,
        }  # fmt: skip
    return out
