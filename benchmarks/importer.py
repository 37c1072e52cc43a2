"""`atp import` benchmark: a stock export to snapshots acknowledged by the broker.

The export has 10 bins per sku over 5 locations (so 2 bins per sku and location): 10,000
skus (100,000 rows) at small size, 100,000 skus (1,000,000 rows) at full size, as a CSV
file. Measured per run, each against the same file and broker:
- import: `atp import`'s own code (atp_service.ops.importer.run), from the file to every
  snapshot acknowledged, in rows per second;
- DuckDB alone: DuckDB reading the same file (every column, into Arrow), rows per second;
- producer alone: the same snapshots, encoded beforehand, produced and acknowledged by the
  import's own sender and settings (importer.Sender, importer.import_producer_config:
  idempotent, acks=all, lz4, linger.ms 20, batch.size 4 MB, failures-only delivery
  reports), in rows per second (rows / the time to send them), two ways: a producer
  already connected with its producer id (the baseline: the producer's own pace), and a
  new producer sending at once, its start included (informative: how this figure was
  measured before; such a producer waits 0.5 s for its producer id, 0.5 to 1 s with the
  earlier settings).
Targets: at least 100,000 rows/s, and at least 0.5x the producer alone.

``python -m benchmarks.importer --size small|full``
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from atp_service.ops import importer
from benchmarks.common import (
    Bench,
    Figure,
    Report,
    bench_config,
    parse_args,
    say,
    stop_on_sigterm,
)

SKUS = {"small": 10_000, "full": 100_000}
BINS_PER_SKU = 10
LOCATIONS = 5


def write_export(path: Path, skus: int) -> int:
    """The export as DuckDB writes it from a generated series; returns its rows."""
    con = duckdb.connect()
    con.execute(
        f"""COPY (
              SELECT printf('SKU-%07d', s) AS sku,
                     printf('DC-%02d', 1 + b % {LOCATIONS}) AS location,
                     printf('B-%02d', b) AS bin,
                     CASE WHEN b % 7 = 0 THEN 'damaged' ELSE 'available' END AS status,
                     (s * 31 + b * 7) % 50 AS quantity
              FROM range({skus}) t(s), range({BINS_PER_SKU}) u(b)
              ORDER BY s, b
            ) TO '{path}' (HEADER, DELIMITER ',')"""
    )
    return skus * BINS_PER_SKU


def duckdb_alone(path: Path) -> float:
    started = time.perf_counter()
    con = duckdb.connect()
    table = con.sql(
        f"SELECT * FROM read_csv('{path}', header = true, all_varchar = true)"
    ).to_arrow_table()
    assert table.num_rows > 0
    return time.perf_counter() - started


def producer_alone(
    bootstrap: str, topic: str, batches: list[importer.Batch], connected: bool
) -> float:
    """Seconds for the import's sender to have every snapshot acknowledged. ``connected``:
    timed once the producer has its producer id (one message sent first, not timed); else
    from creating the producer, which then waits for its producer id inside the time."""
    total = sum(len(values) for _, values in batches)
    started = time.perf_counter()
    sender = importer.Sender(bootstrap)
    if connected:
        keys, values = batches[0]
        sender.send(topic, [(keys[:1], values[:1])], 1)
        started = time.perf_counter()
    sender.send(topic, batches, total)
    seconds = time.perf_counter() - started
    del sender
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("atp import: a stock export to acknowledged snapshots", argv)
    stop_on_sigterm()
    skus = SKUS[args.size]
    report = Report("importer", args.size, "atp import: stock export to snapshots")
    with Bench("importer") as bench:
        bootstrap = bench.start_broker()
        settings = bench.write_config(
            bench_config("redis://127.0.0.1:1/0", bootstrap, ledger_dir=bench.tmp / "ledger"),
            create=True,
        )
        export = bench.tmp / "stock.csv"
        rows = write_export(export, skus)
        report.parameters = {"rows": rows, "skus": skus, "locations": LOCATIONS, "bins_per_sku": BINS_PER_SKU,
                             "file_mb": round(export.stat().st_size / 1e6, 1)}  # fmt: skip
        found = importer.plan(export)
        batches = list(importer.snapshots(found, datetime.now(UTC)))
        snapshots = sum(len(values) for _, values in batches)
        report.parameters["snapshots"] = snapshots
        imported: list[float] = []
        read: list[float] = []
        sent: list[float] = []
        cold: list[float] = []
        for run in range(args.runs):
            as_of = datetime(2030, 1, 1, run, tzinfo=UTC)  # a new import each run
            started = time.perf_counter()
            done = importer.run(settings, export, as_of)
            seconds = time.perf_counter() - started
            assert done.rows == rows and done.snapshots == snapshots
            imported.append(rows / seconds)
            read.append(rows / duckdb_alone(export))
            topic = settings.topics.movements
            sent.append(rows / producer_alone(bootstrap, topic, batches, connected=True))
            cold.append(rows / producer_alone(bootstrap, topic, batches, connected=False))
            say(
                f"  run {run + 1}: import {imported[-1]:,.0f} rows/s, DuckDB {read[-1]:,.0f}, "
                f"producer {sent[-1]:,.0f} (new producer {cold[-1]:,.0f})"
            )
    report.add(Figure("atp import, file to snapshots acknowledged", "rows/s", imported,
                      "the producer alone, connected, same snapshots", sent,
                      [("ratio", ">=", 0.5), ("value", ">=", 100_000)]))  # fmt: skip
    report.add(Figure("atp import, beside a new producer", "rows/s", imported,
                      "the producer alone, new, its start included", cold, informative=True))  # fmt: skip
    report.add(Figure("DuckDB reading the file alone", "rows/s", read, informative=True))
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
