"""Read benchmark: GET one sku and POST a 1000-sku query, against baselines in the same run.

Servers (all `atp serve`'s granian settings, same worker count, started side by side):
- atp: `atp serve --workers 2`, the real API (auth, read cache, stored documents);
- constant: a constant-JSON Litestar endpoint on the same route (benchmarks/baseline_app.py);
- redis-get: the same route doing one Redis HGET per request (no cache, no auth);
- sql: compute-on-read, as Saleor and Medusa do it: the same answer computed per request by
  one SQL query over raw rows (sku-location stock, reservations, inbound lines) in a
  PostgreSQL server of its own (benchmarks/postgres.py; the Debian package, installed when
  missing), through an asyncpg pool (benchmarks/sql_app.py). Its skus include the preloaded
  ones, so wrk cycles over the same sku set; its answers are checked against the contract's
  formulas computed in Python over the same rows before measuring.

wrk (its own process) cycles through every preloaded sku, so the API's cache sees each sku,
not one hot key. Each API worker keeps its own cache, filled by its misses: the API is
warmed until every worker has seen every sku and its rate has settled (the first, cold pass
is reported as an informative row); the figures are the steady state. Single read: requests/s at 32 connections (-t2 -c32) and p50/p99 at 1 and
32 connections. Bulk: POST /v1/availability/web/query with 1000 skus (-t2 -c8) in sku
values/s per worker, against a raw pipelined HGET of the same 1000 fields from one Python
process: MGET of the same 1000 documents stored as plain strings (and, informative, a
pipelined HGET of the real hash fields). Compute-on-read: our requests/s at 32 connections
against the SQL endpoint's (target >= 5x), and our p99 at 32 connections against its p99
(target lower).

Kits (contract section 10): as many kit skus as preloaded skus (KIT-0000001.., 2 or 3
components each, quantity 1 or 2, over components with stock on the channel), stored as
HTTP stores them (KitRecords.put) and computed by the consumer's sweep: a running `atp
consume` with the consumer preload, the direct projector's own Sweeper with the direct one,
until every kit has a stored document with stock and none is due; a sample of kit reads is
checked against the contract's formulas over the components' stored documents. The same
API server is warmed on the kit skus the same way, then each run reads the kit skus right
beside the plain ones (same wrk settings, which first alternating by run): kit requests/s
at 32 connections against plain (target >= 1/1.2) and kit p50 at 1 and 32 connections
against plain (target <= 1.2x); p99 and the cold pass are informative.

With ``--stores cluster`` (or any of ``single/N``, ``cluster/N``, comma-separated) the run
is instead the same single-sku read on each of those Redis layouts beside one Redis with one
shard, each with its own `atp serve --workers 2` started side by side: the same skus
preloaded into each (the consumer's ``apply()``), every server warmed the same way, then
wrk at 32 and 1 connections against each, which first rotating by run. The cluster is 3
primaries with no replicas. Figures: requests/s @32 (target >= 0.9x one Redis for a
cluster), p50/p99 @1 and @32, and the cold first pass (each worker's cache misses go to
Redis) as informative rows. No SQL, kits or bulk rows in this mode (kits are refused on a
cluster).

``python -m benchmarks.read --size small|full [--stores single/16,cluster]``
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import random
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from allocation.kits import KitComponent, KitDefinition
from atp_service.store import keys
from atp_service.store.kit_records import KitRecord, KitRecords
from benchmarks import postgres

try:
    from benchmarks import sql_app
except ModuleNotFoundError as error:  # an older .venv, made before asyncpg was a dependency
    if error.name != "asyncpg":
        raise
    raise SystemExit(
        "asyncpg (the SQL baseline's driver) is not installed: run `.venv/bin/pip install -e '.[dev]'`"
    ) from None
from atp_service.config import parse_config
from benchmarks.common import (
    API_KEY,
    CHANNELS,
    LOCATIONS,
    STORE_SPECS,
    WORKERS,
    Bench,
    Figure,
    Report,
    Store,
    WrkResult,
    apply_events,
    bench_config,
    channel_locations,
    direct_projector,
    ensure_wrk,
    lua_get_paths,
    lua_post,
    parse_args,
    produce_all,
    run_wrk,
    say,
    stop_on_sigterm,
    stored_offsets_total,
    timed,
)
from benchmarks.workload import Workload, encoded, sku_name
from streams.changeset import projection_field
from streams.events import decode

SIZES: dict[str, dict[str, Any]] = {
    # skus preloaded, wrk seconds per measurement, warm-up seconds, preload path; the SQL
    # baseline's raw rows (sku-location stock rows, reservations, inbound lines, overrides)
    "small": {"skus": 10_000, "duration": 3, "warmup": 2, "preload": "direct", "extra_events": 10_000,
              "sql_stock_rows": 100_000, "sql_reservations": 20_000, "sql_inbound": 5_000, "sql_overrides": 1_000},
    "full": {"skus": 10_000, "duration": 10, "warmup": 5, "preload": "consumer", "extra_events": 50_000,
             "sql_stock_rows": 1_000_000, "sql_reservations": 200_000, "sql_inbound": 50_000, "sql_overrides": 10_000},
}  # fmt: skip
CHANNEL = "web"
BULK = 1000
AUTH = f"Authorization: Bearer {API_KEY}"
SQL_LOCATIONS_PER_SKU = 4  # stock rows per sku in the SQL baseline (of the 8 locations)
SQL_POOL = 16  # asyncpg connections per worker (x 2 workers = wrk's 32 connections)
SQL_CHECKED = 200  # skus whose SQL answer is checked against the formulas before measuring
KIT_COMPONENTS = (2, 3)  # components per kit
KITS_CHECKED = 200  # kits whose read is checked against their components' before measuring


def preload(bench: Bench, size: dict[str, Any], skus: list[str]) -> int:
    """Fill Redis with the projection of a generated stream; returns the event count."""
    settings = bench.settings
    assert settings is not None
    workload = Workload(skus, settings.locations, channel_locations(), seed=3)
    items = [*workload.opening_stock(), *workload.events(size["extra_events"])]
    if size["preload"] == "direct":
        projector = direct_projector(settings)
        events = [decode(msgspec.json.encode(event)) for _, _, event in items]
        apply_events(projector, events)
        return len(events)
    topics = {k: getattr(settings.topics, k) for k in ("movements", "reservations", "inbound")}
    messages = []
    for item in items:
        kind, key, value = encoded(item)
        messages.append((topics[kind], key, value))
    produce_all(settings.kafka.bootstrap, messages)
    consumer = bench.start_consumer()
    client = bench.redis()
    deadline = time.monotonic() + 600
    while stored_offsets_total(client, settings.kafka.group_id) < len(messages):
        if not consumer.alive or time.monotonic() > deadline:
            raise RuntimeError(
                f"the consumer did not catch up:\n{consumer.log.read_text()[-3000:]}"
            )
        time.sleep(0.2)
    bench.stop(consumer)
    return len(messages)


def define_kits(skus: Sequence[str], docs: Sequence[bytes | None]) -> list[KitDefinition]:
    """As many kits as ``skus`` (KIT-0000001.., names as long as the skus'), each of 2 or
    3 distinct components with a quantity per kit of 1 or 2 that their stored channel
    document allows, so every kit has stock on the channel."""
    stocked = [
        (sku, ats)
        for sku, doc in zip(skus, docs, strict=True)
        if doc is not None and (ats := msgspec.json.decode(doc)["available_to_sell"]) >= 1
    ]
    if len(stocked) < max(KIT_COMPONENTS):
        raise RuntimeError(f"only {len(stocked)} skus have stock on {CHANNEL}: cannot build kits")
    rng = random.Random(17)
    kits = []
    for i in range(1, len(skus) + 1):
        picked = rng.sample(stocked, rng.choice(KIT_COMPONENTS))
        components = tuple(KitComponent(sku, rng.randint(1, min(2, ats))) for sku, ats in picked)
        kits.append(KitDefinition(kit_name(i), components))
    return kits


def kit_name(i: int) -> str:
    return f"KIT-{i:07d}"


def compute_kits(bench: Bench, size: dict[str, Any], kits: Sequence[KitDefinition]) -> None:
    """Store the kits' records (as HTTP does: source "api", so a consumer's start does not
    remove them) and have the consumer's sweep compute every kit: a running `atp consume`
    with the consumer preload, else the direct projector's own Sweeper. Returns once every
    kit has a stored channel document with stock and none is due."""
    settings = bench.settings
    assert settings is not None
    client = bench.redis()
    records = KitRecords(client)
    now_ms = time.time_ns() // 1_000_000
    for kit in kits:
        records.put(kit.sku, KitRecord(kit.sku, kit.components, "api"), now_ms)
    names = [kit.sku for kit in kits]
    field = projection_field(CHANNEL)

    def pending() -> int:
        due = client.zmscore(keys.SINGLE.due_key(0), names)
        counted = client.zmscore(keys.SINGLE.kits_due_key(0), names)
        now = time.time_ns() // 1_000_000
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hget(keys.SINGLE.sku_key(name), field)
        docs = pipe.execute()
        return sum(
            (score is not None and score <= now)
            or writes is not None
            or doc is None
            or msgspec.json.decode(doc)["available_to_sell"] < 1
            for score, writes, doc in zip(due, counted, docs, strict=True)
        )

    deadline = time.monotonic() + 600
    if size["preload"] == "direct":
        projector = direct_projector(settings)
        while left := pending():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{left} kits not computed after 600 s of sweeps")
            # The loop's sweep, minus publishing (no producer here: the outbox stays in Redis).
            projector.sweeper.sweep(projector.clock, projector._write, 1.0)
    else:
        consumer = bench.start_consumer()
        while left := pending():
            if not consumer.alive or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{left} kits not computed by the consumer:\n{consumer.log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        bench.stop(consumer)
    client.close()


def expected_kit(kit: KitDefinition, components: dict[str, bytes]) -> dict[str, Any]:
    """A kit's channel document (less as_of) by contract section 10, from its components'
    stored documents: least floor(figure / quantity) over the components; the timeline
    lists every component's days, each component at its latest entry up to the day (its
    available_to_sell before its first)."""
    parts = [(msgspec.json.decode(components[c.sku]), c.quantity) for c in kit.components]
    days = sorted({entry["date"] for doc, _ in parts for entry in doc["atp"]})

    def at(doc: dict[str, Any], day: str) -> int:
        value: int = doc["available_to_sell"]
        for entry in doc["atp"]:
            if entry["date"] <= day:
                value = entry["quantity"]
        return value

    return {
        "channel": CHANNEL, "sku": kit.sku,
        "available_to_sell": min(doc["available_to_sell"] // q for doc, q in parts),
        "on_hand": min(doc["on_hand"] // q for doc, q in parts), "reserved": 0, "safety_stock": 0,
        "atp": [{"date": day, "quantity": min(at(doc, day) // q for doc, q in parts)} for day in days],
    }  # fmt: skip


def check_kits(bench: Bench, port: int, kits: Sequence[KitDefinition]) -> None:
    """A sample of kit reads over the API equal the contract's formulas over their
    components' stored documents, and the kit's own stored document."""
    client = bench.redis()
    field = projection_field(CHANNEL)
    sample = random.Random(19).sample(list(kits), min(KITS_CHECKED, len(kits)))
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    ) as http:
        for kit in sample:
            names = [c.sku for c in kit.components]
            stored = client.hget(keys.SINGLE.sku_key(kit.sku), field)
            components: dict[str, bytes] = {
                n: client.hget(keys.SINGLE.sku_key(n), field) for n in names
            }  # type: ignore[misc]
            got = http.get(f"/v1/availability/{CHANNEL}/{kit.sku}")
            want = expected_kit(kit, components)
            body = got.json() if got.status_code == 200 else None
            if (
                body is None
                or got.content != stored
                or {k: v for k, v in body.items() if k != "as_of"} != want
                or want["available_to_sell"] < 1
            ):
                raise RuntimeError(
                    f"kit read {kit.sku} ({kit.components}): {got.status_code} {got.text[:400]}, "
                    f"expected {want}"
                )
    client.close()


def python_bulk(bench: Bench, skus: Sequence[str], seconds: float, mode: str) -> float:
    """Sku values/s from one Python process: pipelined HGET of the fields, or MGET of copies."""
    client = bench.redis()
    field = projection_field(CHANNEL)
    names = [keys.SINGLE.sku_key(s) for s in skus]
    copies = [f"bench:copy:{s}" for s in skus]
    if mode == "mget":
        docs = client.mget(copies)
        assert all(docs), "string copies missing"
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if mode == "hget":
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.hget(name, field)
            values = pipe.execute()
        else:
            values = client.mget(copies)
        done += len(values)
    elapsed = time.perf_counter() - started
    client.close()
    return done / elapsed


def start_sql(
    bench: Bench, size: dict[str, Any], skus: Sequence[str], binaries: postgres.Binaries
) -> dict[str, Any]:
    """Start PostgreSQL, generate and load the raw rows, and pass the DSN to the SQL app.

    The SQL skus are SKU-0000001.. (stock rows / 4 of them), a superset of the preloaded
    ``skus``, so wrk cycles over the same sku set on both servers. Returns the service, the
    DSN, the rows (for ``check_sql``), the table row counts and the skus.
    """
    service, dsn = postgres.start_postgres(bench.tmp, binaries)
    bench.services.append(service)  # stopped by Bench.close(), on every exit path
    n_skus = size["sql_stock_rows"] // SQL_LOCATIONS_PER_SKU
    sql_skus = [sku_name(i) for i in range(1, max(n_skus, len(skus)) + 1)]
    assert sql_skus[: len(skus)] == list(skus)
    now = datetime.now(UTC)
    rows = sql_app.generate(
        sql_skus, LOCATIONS, [(name, locs, safety, horizon) for name, _, locs, safety, horizon in CHANNELS],
        locations_per_sku=SQL_LOCATIONS_PER_SKU, reservations=size["sql_reservations"],
        inbound=size["sql_inbound"], overrides=size["sql_overrides"], now=now,
    )  # fmt: skip
    counts = asyncio.run(sql_app.load(dsn, rows))
    os.environ["ATP_BENCH_SQL_DSN"] = dsn  # read by the app's workers (spawned with os.environ)
    os.environ["ATP_BENCH_SQL_POOL"] = str(SQL_POOL)
    return {"service": service, "dsn": dsn, "rows": rows, "counts": counts, "skus": sql_skus}


def check_sql(port: int, rows: sql_app.Rows, skus: Sequence[str]) -> None:
    """The SQL endpoint's answers equal the contract's formulas over the same rows."""
    sample = [*random.Random(13).sample(list(skus), min(SQL_CHECKED, len(skus))), "NO-SUCH-SKU"]
    want = sql_app.expected(rows, CHANNEL, sample, datetime.now(UTC))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for sku in sample:
            got = client.get(f"/v1/availability/{CHANNEL}/{sku}")
            body = got.json() if got.status_code == 200 else None
            if body is None or {k: v for k, v in body.items() if k != "as_of"} != want[sku]:
                raise RuntimeError(
                    f"SQL endpoint answer for {sku}: {got.status_code} {got.text[:300]}, expected {want[sku]}"
                )
        if client.get("/v1/availability/no-such-channel/SKU-0000001").status_code != 404:
            raise RuntimeError("SQL endpoint: an unknown channel is not 404")


def warm(url: str, script: Path, n_skus: int, seconds: float) -> list[WrkResult]:
    """wrk passes at 32 connections until every API worker has likely seen every sku (>= 4
    requests per sku per worker) and the rate has settled; the first pass is the cold one."""
    passes: list[WrkResult] = []
    while True:
        passes.append(run_wrk(url, connections=32, threads=2, duration_s=seconds, script=script,
                              headers=[AUTH]))  # fmt: skip
        done = sum(r.requests for r in passes)
        last = [r.requests_per_s for r in passes[-2:]]
        settled = len(last) > 1 and last[1] < 1.1 * last[0]
        if (done >= 4 * n_skus * WORKERS and settled) or len(passes) >= 30:
            return passes


def compare_stores(args: Any, specs: list[str]) -> int:
    """The single-sku read on each Redis layout in ``specs``, beside one Redis, 1 shard."""
    size = SIZES[args.size]
    report = Report("read-stores", args.size, "Read: GET one sku, Redis layouts side by side")
    skus = [sku_name(i) for i in range(1, size["skus"] + 1)]
    report.parameters = {
        "skus": size["skus"], "workers": WORKERS, "wrk_seconds": size["duration"],
        "runs": args.runs, "preload": "direct", "channel": CHANNEL, "stores": specs,
    }  # fmt: skip
    with Bench("read-stores") as bench:
        ports: dict[str, int] = {}
        labels: dict[str, str] = {}
        stores: dict[str, Store] = {}
        for spec in specs:
            store = stores[spec] = bench.start_store(spec)
            labels[spec] = store.label
            tag = Store.tag(spec)
            text = bench_config(store.url, ledger_dir=bench.tmp / f"ledger-{tag}",
                                redis_table=store.redis_table)  # fmt: skip
            bench.config_path = bench.tmp / f"atp-{tag}.toml"
            bench.config_path.write_text(text)
            bench.settings = parse_config(text)
            with timed(f"{store.label}: preload {len(skus)} skus (direct)"):
                projector = direct_projector(bench.settings)
                projector.ensure_initialized()
                workload = Workload(skus, bench.settings.locations, channel_locations(), seed=3)
                items = [*workload.opening_stock(), *workload.events(size["extra_events"])]
                apply_events(projector, [decode(msgspec.json.encode(e)) for _, _, e in items])
                docs = projector.store.documents([(CHANNEL, sku) for sku in skus])
                if len(docs) != len(skus):
                    raise RuntimeError(f"{store.label}: {len(skus) - len(docs)} skus not stored")
            api = bench.start_api()  # with this store's config
            ports[spec] = api.port or 0
            sample = skus[len(skus) // 2]
            got = httpx.get(f"http://127.0.0.1:{api.port}/v1/availability/{CHANNEL}/{sample}",
                            headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
            if got.status_code != 200 or got.content != docs[(CHANNEL, sample)]:
                raise RuntimeError(f"{store.label}: the API does not return the stored document: "
                                   f"{got.status_code} {got.text[:300]}")  # fmt: skip
        paths = [f"/v1/availability/{CHANNEL}/{s}" for s in skus]
        random.Random(5).shuffle(paths)
        script = lua_get_paths(bench.tmp / "get.lua", paths)
        cold: dict[str, float] = {}
        with timed("warm-up"):
            for spec in specs:
                passes = warm(f"http://127.0.0.1:{ports[spec]}/", script, len(skus), size["warmup"])
                cold[spec] = passes[0].requests_per_s
                say(f"    {labels[spec]}: {len(passes)} passes, {passes[0].requests_per_s:,.0f} "
                    f"-> {passes[-1].requests_per_s:,.0f} req/s")  # fmt: skip
        c32: dict[str, list[WrkResult]] = {spec: [] for spec in specs}
        c1: dict[str, list[WrkResult]] = {spec: [] for spec in specs}
        for store in stores.values():
            store.reset_stats()
        for run in range(args.runs):
            with timed(f"run {run + 1}/{args.runs}"):
                for spec in specs[run % len(specs) :] + specs[: run % len(specs)]:
                    for runs_of, connections, threads in ((c32, 32, 2), (c1, 1, 1)):
                        runs_of[spec].append(run_wrk(
                            f"http://127.0.0.1:{ports[spec]}/", connections=connections,
                            threads=threads, duration_s=size["duration"], script=script,
                            headers=[AUTH],
                        ))  # fmt: skip
                say("    " + "; ".join(f"{labels[x]} {c32[x][-1].requests_per_s:,.0f} req/s"
                                       for x in specs))  # fmt: skip
        # Where a read's time goes in Redis: commands per request served, over the runs.
        for spec, store in stores.items():
            served = sum(r.requests for r in c32[spec] + c1[spec])
            stats = sorted(store.command_stats().items(), key=lambda kv: -kv[1]["calls"])
            report.details.setdefault("redis_commandstats", {})[spec] = dict(stats)
            report.notes.append(
                f"{labels[spec]}: Redis commands over the measured runs ({served:,} reads "
                "served; the other servers' runs between them included), per read: "
                + ", ".join(f"{name} {v['calls'] / served:.3f} ({v['usec'] / 1e3:,.0f} ms in all)"
                            for name, v in stats[:5])
            )  # fmt: skip

    base = "one Redis, 1 shard (same run)"
    for spec in specs[1:]:
        label = labels[spec]
        targets = [("ratio", ">=", 0.9)] if spec.startswith("cluster") else []
        report.add(Figure(f"GET one sku: requests/s @32 conns, {label}", "req/s",
                          [r.requests_per_s for r in c32[spec]], base,
                          [r.requests_per_s for r in c32["single"]], targets,  # type: ignore[arg-type]
                          informative=not targets))  # fmt: skip
        for conns, results in (("1", c1), ("32", c32)):
            for p in ("50", "99"):
                report.add(Figure(f"  p{p} @{conns} conn, {label}", "ms",
                                  [r.latency_ms[p] for r in results[spec]], base,
                                  [r.latency_ms[p] for r in results["single"]],
                                  informative=True))  # fmt: skip
        report.add(Figure(f"  cold caches (first pass, misses go to Redis) @32, {label}",
                          "req/s", [cold[spec]], base, [cold["single"]], informative=True))  # fmt: skip
    report.details["wrk"] = {
        "c32": {n: [r.__dict__ for r in rs] for n, rs in c32.items()},
        "c1": {n: [r.__dict__ for r in rs] for n, rs in c1.items()},
        "cold_req_per_s": cold,
    }
    report.notes.append(
        "every store has its own `atp serve --workers 2` (granian), started side by side; wrk, "
        "the servers and every redis-server share this machine's two cores"
    )
    report.finish()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    def options(parser: Any) -> None:
        parser.add_argument(
            "--stores", default="", metavar="SPECS",
            help="instead, the single-sku read on these Redis layouts (comma-separated), each "
            f"beside one Redis with one shard in the same run: {STORE_SPECS}",
        )  # fmt: skip

    args = parse_args("read benchmark: single-sku and bulk reads vs baselines", argv, options)
    if args.stores:
        specs = ["single"] + [
            x for x in (t.strip() for t in args.stores.split(",")) if x != "single"
        ]
        for spec in specs:
            Store.parse(spec)
        stop_on_sigterm()
        ensure_wrk()
        return compare_stores(args, specs)
    stop_on_sigterm()
    ensure_wrk()
    binaries = postgres.ensure_postgres()
    size = SIZES[args.size]
    report = Report("read", args.size, "Read: GET one sku and POST 1000 skus")
    report.parameters = {
        "skus": size["skus"], "workers": WORKERS, "wrk_seconds": size["duration"],
        "runs": args.runs, "preload": size["preload"], "channel": CHANNEL,
    }  # fmt: skip
    skus = [sku_name(i) for i in range(1, size["skus"] + 1)]
    with Bench("read") as bench:
        redis_url = bench.start_redis()
        bootstrap = bench.start_broker() if size["preload"] == "consumer" else "127.0.0.1:1"
        bench.write_config(
            bench_config(redis_url, bootstrap, ledger_dir=bench.tmp / "ledger"),
            create=size["preload"] == "consumer",
        )
        with timed(f"preload {len(skus)} skus ({size['preload']})"):
            report.parameters["preload_events"] = preload(bench, size, skus)
        client = bench.redis()
        field = projection_field(CHANNEL)

        def stored(names: Sequence[str]) -> list[bytes | None]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.hget(keys.SINGLE.sku_key(name), field)
            return pipe.execute()

        kits = define_kits(skus, stored(skus))
        with timed(f"kits: {len(kits)} defined, computed by the sweep ({size['preload']})"):
            compute_kits(bench, size, kits)
        kit_skus = [kit.sku for kit in kits]
        kit_docs = stored(kit_skus)
        docs = stored(skus)  # after the sweep, which also rewrites skus that fell due
        missing = sum(doc is None for doc in docs)
        if missing:
            raise RuntimeError(f"{missing} skus have no stored {CHANNEL} projection after preload")
        report.parameters["kits"] = {
            "kits": len(kits), "components_per_kit": list(KIT_COMPONENTS),
            "component_skus": len({c.sku for kit in kits for c in kit.components}),
            "mean_doc_bytes": round(statistics.mean(len(d or b"") for d in kit_docs), 1),
            "plain_mean_doc_bytes": round(statistics.mean(len(d or b"") for d in docs), 1),
        }  # fmt: skip
        client.mset({f"bench:copy:{s}": d for s, d in zip(skus, docs, strict=True) if d})
        with timed(f"postgres: start, load {size['sql_stock_rows']:,} stock rows (COPY), index"):
            sql = start_sql(bench, size, skus, binaries)
        report.parameters.update({
            "sql_rows": sql["counts"], "sql_skus": len(sql["skus"]), "sql_pool_per_worker": SQL_POOL,
            "postgresql": postgres.server_version(binaries), "asyncpg": importlib.metadata.version("asyncpg"),
        })  # fmt: skip

        with timed("start servers"):
            servers = {
                "atp": bench.start_api(),
                "constant": bench.start_server("benchmarks.baseline_app:constant_app"),
                "redis-get": bench.start_server("benchmarks.baseline_app:redis_get_app"),
                "sql": bench.start_server("benchmarks.sql_app:sql_app"),
            }
        check_sql(servers["sql"].port or 0, sql["rows"], skus)
        del sql["rows"]  # up to 1.3M tuples, no longer needed
        sample = skus[len(skus) // 2]
        got = httpx.get(
            f"http://127.0.0.1:{servers['atp'].port}/v1/availability/{CHANNEL}/{sample}",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        if got.status_code != 200 or got.content != docs[len(skus) // 2]:
            raise RuntimeError(
                f"the API does not return the stored document: {got.status_code} {got.text[:300]}"
            )

        check_kits(bench, servers["atp"].port or 0, kits)

        paths = [f"/v1/availability/{CHANNEL}/{s}" for s in skus]
        random.Random(5).shuffle(paths)
        get_script = lua_get_paths(bench.tmp / "get.lua", paths)
        kit_paths = [f"/v1/availability/{CHANNEL}/{s}" for s in kit_skus]
        random.Random(5).shuffle(kit_paths)
        kit_script = lua_get_paths(bench.tmp / "get-kit.lua", kit_paths)
        bulk_skus = random.Random(9).sample(skus, BULK)
        post_script = lua_post(bench.tmp / "post.lua", msgspec.json.encode({"skus": bulk_skus}))
        reply = httpx.post(
            f"http://127.0.0.1:{servers['atp'].port}/v1/availability/{CHANNEL}/query",
            json={"skus": bulk_skus}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10,
        )  # fmt: skip
        if reply.status_code != 200 or len(reply.json()["items"]) != BULK:
            raise RuntimeError(f"bulk query failed: {reply.status_code} {reply.text[:300]}")

        def url(name: str, path: str = "/") -> str:
            return f"http://127.0.0.1:{servers[name].port}{path}"

        duration = size["duration"]

        def warm_api(label: str, script: Path, n_skus: int) -> list[WrkResult]:
            # Every API worker keeps its own cache, filled by its misses: warm until each
            # worker has likely seen every sku (>= 4 requests per sku per worker) and the
            # rate has settled. The first pass is the cold-cache figure.
            passes: list[WrkResult] = []
            while True:
                passes.append(run_wrk(url("atp"), connections=32, threads=2, duration_s=size["warmup"],
                                      script=script, headers=[AUTH]))  # fmt: skip
                done = sum(r.requests for r in passes)
                last = [r.requests_per_s for r in passes[-2:]]
                settled = len(last) > 1 and last[1] < 1.1 * last[0]
                if (done >= 4 * n_skus * WORKERS and settled) or len(passes) >= 30:
                    break
            say(f"    {label} warm-up: {len(passes)} passes, {done:,} requests, "
                f"{passes[0].requests_per_s:,.0f} -> {passes[-1].requests_per_s:,.0f} req/s")  # fmt: skip
            return passes

        with timed("warm-up"):
            warm = warm_api("atp", get_script, len(skus))
            warm_kit = warm_api("atp kits", kit_script, len(kit_skus))
            for name in ("constant", "redis-get", "sql"):
                run_wrk(
                    url(name),
                    connections=32,
                    threads=2,
                    duration_s=size["warmup"],
                    script=get_script,
                    headers=[AUTH],
                )
            run_wrk(url("atp", f"/v1/availability/{CHANNEL}/query"), connections=8, threads=2,
                    duration_s=size["warmup"], script=post_script, headers=[AUTH])  # fmt: skip

        c32: dict[str, list[WrkResult]] = {n: [] for n in [*servers, "atp-kit"]}
        c1: dict[str, list[WrkResult]] = {n: [] for n in [*servers, "atp-kit"]}
        bulk: list[WrkResult] = []
        raw_hget: list[float] = []
        raw_mget: list[float] = []
        order = list(servers)
        for run in range(args.runs):
            with timed(f"run {run + 1}/{args.runs}"):
                # Rotate the order so no server always runs first (or after the same one).
                for name in order[run % len(order) :] + order[: run % len(order)]:
                    reads = [(name, get_script)]
                    if name == "atp":  # kit skus right beside plain skus, each first in turn
                        reads = [("atp", get_script), ("atp-kit", kit_script)]
                        if run % 2:
                            reads.reverse()
                    for label, script in reads:
                        for runs_of, connections, threads in ((c32, 32, 2), (c1, 1, 1)):
                            runs_of[label].append(
                                run_wrk(
                                    url(name),
                                    connections=connections,
                                    threads=threads,
                                    duration_s=duration,
                                    script=script,
                                    headers=[AUTH],
                                )
                            )
                bulk.append(run_wrk(url("atp", f"/v1/availability/{CHANNEL}/query"), connections=8, threads=2,
                                    duration_s=duration, script=post_script, headers=[AUTH]))  # fmt: skip
                raw_hget.append(python_bulk(bench, bulk_skus, duration, "hget"))
                raw_mget.append(python_bulk(bench, bulk_skus, duration, "mget"))

    def rps(results: list[WrkResult]) -> list[float]:
        return [r.requests_per_s for r in results]

    def pct(results: list[WrkResult], p: str) -> list[float]:
        return [r.latency_ms[p] for r in results]

    add = report.add
    add(Figure("GET one sku: requests/s @32 conns", "req/s", rps(c32["atp"]), "constant JSON endpoint",
               rps(c32["constant"]), [("ratio", ">=", 0.8)]))  # fmt: skip
    add(Figure("  (plain Redis GET per request) requests/s @32", "req/s", rps(c32["redis-get"]),
               "constant JSON endpoint", rps(c32["constant"]), informative=True))  # fmt: skip
    add(Figure("  (atp, cold caches: first pass over the skus) requests/s @32", "req/s",
               [warm[0].requests_per_s], "constant JSON endpoint", rps(c32["constant"]), informative=True))  # fmt: skip
    sql_name = "compute-on-read: SQL per request (PostgreSQL, asyncpg pool)"
    add(Figure("GET one sku vs compute-on-read: requests/s @32", "req/s", rps(c32["atp"]), sql_name,
               rps(c32["sql"]), [("ratio", ">=", 5.0)]))  # fmt: skip
    add(Figure("GET one sku vs compute-on-read: p99 @32", "ms", pct(c32["atp"], "99"), sql_name,
               pct(c32["sql"], "99"), [("ratio", "<", 1.0)], target_text="x< 1 (lower)"))  # fmt: skip
    for conns, results in (("1", c1), ("32", c32)):
        add(Figure(f"GET one sku: p50 @{conns} conn", "ms", pct(results["atp"], "50"), "constant JSON endpoint",
                   pct(results["constant"], "50"), [("ratio", "<=", 1.3)]))  # fmt: skip
        add(Figure(f"GET one sku: p99 @{conns} conn", "ms", pct(results["atp"], "99"), "constant JSON endpoint",
                   pct(results["constant"], "99"), [("ratio", "<=", 2.0)]))  # fmt: skip
    add(Figure("  (plain Redis GET per request) p99 @32", "ms", pct(c32["redis-get"], "99"),
               "constant JSON endpoint", pct(c32["constant"], "99"), informative=True))  # fmt: skip
    plain = "GET one plain sku (atp, same run, alternating)"
    add(Figure("GET one kit sku: requests/s @32 conns", "req/s", rps(c32["atp-kit"]), plain,
               rps(c32["atp"]), [("ratio", ">=", 1 / 1.2)], target_text="x>= 0.83 (within 1.2x)"))  # fmt: skip
    for conns, results in (("1", c1), ("32", c32)):
        add(Figure(f"GET one kit sku: p50 @{conns} conn", "ms", pct(results["atp-kit"], "50"), plain,
                   pct(results["atp"], "50"), [("ratio", "<=", 1.2)]))  # fmt: skip
        add(Figure(f"  (kit sku) p99 @{conns} conn", "ms", pct(results["atp-kit"], "99"), plain,
                   pct(results["atp"], "99"), informative=True))  # fmt: skip
    add(Figure("  (atp kit skus, cold caches: first pass) requests/s @32", "req/s",
               [warm_kit[0].requests_per_s], "plain skus' first pass", [warm[0].requests_per_s],
               informative=True))  # fmt: skip
    per_worker = [r.requests_per_s * BULK / WORKERS for r in bulk]
    add(Figure("POST query 1000 skus: sku values/s per worker", "values/s", per_worker,
               "raw MGET of the 1000 docs, 1 Python process", raw_mget,
               [("ratio", ">=", 1 / 3), ("value", ">", 100_000)], target_text="x>= 0.33, > 100,000/s"))  # fmt: skip
    add(Figure("  (raw pipelined HGET of the same fields)", "values/s", raw_hget,
               "raw MGET of the 1000 docs, 1 Python process", raw_mget, informative=True))  # fmt: skip
    add(Figure("POST query 1000 skus: p50 @8 conns", "ms", pct(bulk, "50"), informative=True))
    add(Figure("POST query 1000 skus: p99 @8 conns", "ms", pct(bulk, "99"), informative=True))

    for conns, results in (("32 connections", c32), ("1 connection", c1)):
        title = f"GET one sku: latency percentiles, {conns} (median of runs)"
        report.series[title] = {
            name: {f"p{p}": statistics.median(pct(rs, p)) for p in ("50", "75", "90", "99")}
            for name, rs in results.items()
        }
        report.series_unit[title] = "ms"
    report.series["requests/s @32 connections (median of runs)"] = {
        "req/s": {name: statistics.median(rps(rs)) for name, rs in c32.items()}
    }
    report.series_unit["requests/s @32 connections (median of runs)"] = "req/s"
    report.series_kind["requests/s @32 connections (median of runs)"] = "bar"
    report.details = {
        "warm_up": [r.__dict__ for r in warm],
        "warm_up_kits": [r.__dict__ for r in warm_kit],
        "wrk": {
            "c32": {n: [r.__dict__ for r in rs] for n, rs in c32.items()},
            "c1": {n: [r.__dict__ for r in rs] for n, rs in c1.items()},
            "bulk": [r.__dict__ for r in bulk],
        },
    }
    report.notes.append(
        "wrk, the servers and Redis share this machine's cores; compare ratios, not absolutes."
    )
    report.notes.append(
        f"compute-on-read: one SQL query per request (stock + reservations + inbound + overrides of "
        f"the sku over the channel's locations, prepared, through an asyncpg pool of {SQL_POOL} per "
        f"worker) over {sql['counts']['stock']:,} sku-location stock rows, "
        f"{sql['counts']['reservations']:,} reservations and {sql['counts']['inbound']:,} inbound "
        f"lines of {len(sql['skus']):,} skus in PostgreSQL {report.parameters['postgresql']} "
        "(fsync off, shared_buffers 256MB: all in memory); no auth check on that server; the "
        "PostgreSQL server shares the machine's cores too."
    )
    report.notes.append(
        "bulk per worker = wrk requests/s x 1000 / workers; the baseline is one Python process "
        "(redis-py) doing one MGET of the same 1000 documents stored as plain strings (the "
        "projection itself lives in hash fields, so the pipelined HGET row is what a cache-less "
        "read of the real layout costs)."
    )
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
