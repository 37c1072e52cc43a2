"""Allocation benchmark: the vectorized batch against the plain-Python reference, and single
allocations over HTTP against the single-sku read, in the same run.

1. Batch: 100,000 lines over 50,000 skus, 5 channels (priorities 1-5), 8 locations, 30%
   backorder, 50,000 inbound lines (small: a tenth of that). ``allocation.allocate.allocate``
   and ``allocation.reference.allocate_reference`` on the same input; the results must be equal.
2. HTTP: ``POST /v1/allocations`` of one-line orders at 32 connections (wrk, its own
   process) against a real API, Redis and broker (every 201 waited for the broker's
   acknowledgement), beside ``GET /v1/availability/web/{sku}`` in the same run.

   The orders spread over many skus as a storefront's do (each wrk thread starts at another
   place in the list), and one in ``HOT_EVERY`` goes to a few hot skus with little stock,
   restocked before every run, so every run sells them out under contention. Order ids are
   unique across runs: a repeated id is answered from the stored order (200) without
   allocating, which would flatter the figures; the benchmark checks that every request
   created an order. Before the measured runs, short cold passes let each API worker's
   producer connect (informative rows: the first allocations of a process wait about 0.5 s
   for the idempotent producer's id; several passes, as one wrk run's connections may all
   land on one worker). Afterwards, from the stored orders: no (sku, location) is
   reserved beyond the stock it was given, the projection's reserved equals the orders'
   holds, and no spread sku ran out (an unfilled order publishes nothing and would flatter
   the figures).

With ``--backlog`` the run is instead single allocations while the consumer catches up:
for each Redis layout of ``--stores`` (one Redis with 1 shard by default; ``single/N`` for
N shards on one Redis; ``cluster`` for a local Redis Cluster) its own Redis,
topics, `atp serve --workers 2` and `atp consume`, the spread skus stocked as above. Each
run: allocations at 32 connections with the consumer idle (caught up: it folds only the
allocations' own events), then a backlog of new events (the fold benchmark's workload over
its 10,000 skus, other skus than the orders'; 500,000, small: 50,000) produced at once,
and allocations for the same time while the consumer folds it, then a wait until its stored
offsets cover the backlog. Figures: p50 and p99 during the catch-up beside idle (target
p99 within 2x); the catch-up's events/s and the longest scripts during it (SLOWLOG, calls
of 1 ms or more) are informative, and no (sku, location) may be reserved beyond its stock.
Beside each wrk run, probes time what a request waits for the broker and Redis alone: every
20 ms, a message of a topic of its own produced as the API does (idempotent, acks=all) and
flushed, then a PING to a Redis node.

``python -m benchmarks.allocation --size small|full [--backlog [--stores single,single/64]]``
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from confluent_kafka import Producer

from allocation.allocate import allocate
from allocation.network import Network, Supply
from allocation.reference import allocate_reference
from atp_service.config import parse_config
from atp_service.local.services import create_topics
from atp_service.orders import StoredOrder, decode_stored
from atp_service.runtime import store_for, sync_redis
from atp_service.store import keys
from benchmarks.common import (
    API_KEY,
    STORE_SPECS,
    Bench,
    Figure,
    Report,
    Store,
    apply_events,
    bench_config,
    direct_projector,
    ensure_wrk,
    lua_get_paths,
    parse_args,
    percentile,
    produce_tracked,
    run_wrk,
    say,
    stop_on_sigterm,
    timed,
)
from streams.events import decode

SIZES = {
    "small": {"lines": 10_000, "skus": 5_000, "inbound": 5_000, "http_skus": 2_000, "seconds": 4},
    "full": {
        "lines": 100_000,
        "skus": 50_000,
        "inbound": 50_000,
        "http_skus": 20_000,
        "seconds": 10,
    },
}
LOCATIONS = 8
TODAY = 20_000
AUTH = f"Authorization: Bearer {API_KEY}"
HOT_SKUS = 4
HOT_EVERY = 10  # one order in HOT_EVERY goes to a hot sku
HOT_STOCK = 10  # units per web location added to every hot sku before each run
SPREAD_STOCK = 100  # units per web location of every other sku: more than a run takes
# Cold passes before the measured runs: each API worker's producer connects on its first
# allocation (about 0.5 s for the idempotent producer's id). One wrk run's connections may all
# land on one worker, so several short passes, each with new connections, reach every worker.
COLD_PASSES = 3
COLD_SECONDS = 2


class _Channel:
    def __init__(
        self, name: str, priority: int, locations: Sequence[str], safety: int, horizon: int
    ) -> None:
        self.name, self.priority, self.locations = name, priority, list(locations)
        self.safety_stock, self.inbound_horizon_days = safety, horizon


def batch_input(
    lines: int, skus: int, inbound: int, seed: int = 5
) -> tuple[Supply, Network, tuple[Any, ...]]:
    rng = np.random.default_rng(seed)
    names = [f"DC-{i}" for i in range(LOCATIONS)]
    channels = [
        _Channel(f"c{c}", c + 1, list(rng.permutation(names)[: LOCATIONS - c]), c * 2, 7 + 3 * c)
        for c in range(5)
    ]
    network = Network.of(channels)
    on_hand = rng.integers(0, 12, size=(skus, LOCATIONS)).astype(np.int64)
    reserved = np.minimum(on_hand, rng.integers(0, 3, size=(skus, LOCATIONS))).astype(np.int64)
    safety = np.broadcast_to(network.safety_stock, (skus, len(channels))).copy()
    supply = Supply(
        on_hand=on_hand,
        reserved=reserved,
        safety_stock=safety,
        inbound_sku=rng.integers(0, skus, size=inbound).astype(np.int64),
        inbound_location=rng.integers(0, LOCATIONS, size=inbound).astype(np.int64),
        inbound_quantity=rng.integers(1, 30, size=inbound).astype(np.int64),
        inbound_eta=(TODAY + rng.integers(-2, 25, size=inbound)).astype(np.int64),
    )
    demand = (
        rng.integers(0, len(channels), size=lines).astype(np.int64),
        rng.integers(0, skus, size=lines).astype(np.int64),
        rng.integers(1, 6, size=lines).astype(np.int64),
        rng.random(lines) < 0.3,
    )
    return supply, network, demand


def time_batch(size: dict[str, Any], runs: int) -> tuple[list[float], list[float]]:
    supply, network, demand = batch_input(size["lines"], size["skus"], size["inbound"])
    fast: list[float] = []
    slow: list[float] = []
    for run in range(runs):
        started = time.perf_counter()
        ours = allocate(supply, network, TODAY, *demand)
        fast.append(time.perf_counter() - started)
        started = time.perf_counter()
        theirs = allocate_reference(supply, network, TODAY, *demand)
        slow.append(time.perf_counter() - started)
        for field in (
            "taken",
            "backordered",
            "promise_day",
            "promise_location",
            "unfilled",
            "reserved",
        ):
            if not np.array_equal(getattr(ours, field), getattr(theirs, field)):
                raise AssertionError(f"vectorized and reference differ in {field}")
        say(
            f"  run {run + 1}/{runs}: vectorized {fast[-1] * 1000:.1f} ms, reference {slow[-1] * 1000:.0f} ms"
        )
    return fast, slow


def lua_orders(path: Any, skus: Sequence[str], hot: Sequence[str], tag: str) -> Any:
    """wrk script: one-line web orders with ids unique to ``tag`` (one tag per wrk run).

    Each thread cycles through ``skus`` from its own starting point; every HOT_EVERY-th
    order of a thread goes to one of the ``hot`` skus instead.
    """
    table = ",".join(json.dumps(s) for s in skus)
    hot_table = ",".join(json.dumps(s) for s in hot)
    path.write_text(
        f"""
local skus = {{{table}}}
local hot = {{{hot_table}}}
local n = 0
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function init(args)
  i = ((tid or 0) * 7919) % #skus
end
function request()
  n = n + 1
  local sku
  if n % {HOT_EVERY} == 0 then
    sku = hot[math.floor(n / {HOT_EVERY}) % #hot + 1]
  else
    i = i % #skus + 1
    sku = skus[i]
  end
  local body = '{{"order_id":"{tag}-' .. (tid or 0) .. '-' .. n ..
    '","channel":"web","lines":[{{"line_id":"1","sku":"' .. sku .. '","quantity":1}}]}}'
  -- wrk.format replaces wrk.headers (which holds -H) when given a table: extend it instead.
  wrk.headers["Content-Type"] = "application/json"
  return wrk.format("POST", "/v1/allocations", wrk.headers, body)
end
"""
    )
    return path


def stock_events(
    skus: Sequence[str], locations: Sequence[str], quantity: int, tag: str
) -> list[Any]:
    return [
        decode(json.dumps({
            "type": "bin_movement", "event_id": f"stock-{tag}-{sku}-{loc}",
            "occurred_at": "2026-11-27T00:00:00Z", "sku": sku, "location": loc,
            "quantity": quantity, "to_bin": "A-1", "to_status": "available",
        }).encode())
        for sku in skus for loc in locations
    ]  # fmt: skip


def count_orders(client: Any) -> int:
    return sum(1 for _ in client.scan_iter(match=keys.SINGLE.order_key("*"), count=10_000))


def stored_orders(client: Any) -> list[StoredOrder]:
    names = list(client.scan_iter(match=keys.SINGLE.order_key("*"), count=10_000))
    out = []
    # On a cluster the orders' keys are in many slots: one MGET per slot.
    get = getattr(client, "mget_nonatomic", client.mget)
    for start in range(0, len(names), 5000):
        out += [decode_stored(raw) for raw in get(names[start : start + 5000]) if raw]
    return out


def check_orders(
    client: Any, stock: dict[tuple[str, str], int], hot: set[str], layout: Any = keys.SINGLE
) -> tuple[int, int, int]:
    """From the stored orders: (sku, location) pairs reserved beyond their stock, skus whose
    projected reserved differs from the orders' holds, and unfilled orders of spread skus."""
    held: dict[tuple[str, str], int] = {}
    per_sku: dict[str, int] = {}
    short = 0
    for order in stored_orders(client):
        for h in order.held:
            held[(h.sku, h.location)] = held.get((h.sku, h.location), 0) + h.quantity
            per_sku[h.sku] = per_sku.get(h.sku, 0) + h.quantity
        short += sum(1 for line in order.result.lines if line.unfilled and line.sku not in hot)
    over = sum(1 for pair, units in held.items() if units > stock.get(pair, 0))
    skus = sorted({sku for sku, _ in stock})
    mismatched = []
    for sku in skus:
        doc = json.loads(client.hget(layout.sku_key(sku), "p:web") or b"{}")
        reserved, on_hand = doc.get("reserved", 0), doc.get("on_hand", 0)
        if reserved != per_sku.get(sku, 0) or reserved > on_hand:
            mismatched.append(
                f"{sku}: reserved {reserved}, on hand {on_hand}, held {per_sku.get(sku, 0)}"
            )
    if mismatched:
        say("  projection and orders differ: " + "; ".join(mismatched[:5]))
    return over, len(mismatched), short


def settle(client: Any, quiet_s: float = 1.0, limit_s: float = 15.0) -> None:
    """Wait until no order was created for ``quiet_s``: answers still in flight when wrk
    stopped (up to its 32 connections) finish before anything is counted or checked."""
    deadline = time.monotonic() + limit_s
    seen = count_orders(client)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = count_orders(client)
        if now == seen:
            return
        seen = now


BACKLOG = {"small": 50_000, "full": 500_000}  # events the consumer catches up on


PROBE_EVERY_S = 0.02


class Probes:
    """While a wrk run goes: every PROBE_EVERY_S, a message to ``topic`` produced as the API
    produces (idempotent, acks=all) and flushed, timed to its acknowledgement; then a PING
    to ``node``, timed to its answer. What the broker and Redis alone make a request wait."""

    def __init__(self, bootstrap: str, topic: str, node: Any) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                  "acks": "all", "linger.ms": 2})  # fmt: skip
        self.topic, self.node = topic, node
        self.producer.produce(topic, b"warm")
        self.producer.flush(30)  # the idempotent producer's id, before anything is timed
        self.broker_ms: list[float] = []
        self.redis_ms: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Probes:
        self.broker_ms, self.redis_ms = [], []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="probes", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            started = time.perf_counter()
            self.producer.produce(self.topic, b"probe")
            if self.producer.flush(30) == 0:
                self.broker_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            self.node.ping()
            self.redis_ms.append((time.perf_counter() - started) * 1000)


def backlog_on(bench: Bench, bootstrap: str, spec: str, args: Any, report: Report) -> None:
    """The ``--backlog`` runs on one Redis layout, added to ``report``."""
    from benchmarks.fold import SIZES as FOLD_SIZES
    from benchmarks.fold import generate

    size = SIZES[args.size]
    events = BACKLOG[args.size]
    store = bench.start_store(spec)
    tag = Store.tag(spec)
    text = bench_config(store.url, bootstrap, prefix=f"bl-{tag}", group_id=f"bl-{tag}",
                        ledger_dir=bench.tmp / f"ledger-{tag}",
                        redis_table=store.redis_table)  # fmt: skip
    bench.config_path = bench.tmp / f"atp-{tag}.toml"
    bench.config_path.write_text(text)
    settings = bench.settings = parse_config(text)
    create_topics(bootstrap, settings.topics.names(), partitions=4)
    create_topics(bootstrap, [f"bl-{tag}-probe"], partitions=1)
    report.parameters["batch_size"] = settings.consumer.batch_size
    skus = [f"A-{i:05d}" for i in range(size["http_skus"])]
    hot = [f"HOT-{i}" for i in range(HOT_SKUS)]
    locations = settings.channel("web").locations  # type: ignore[union-attr]
    projector = direct_projector(settings)
    projector.ensure_initialized()
    apply_events(projector, stock_events(skus, locations, SPREAD_STOCK, "spread"))
    stock = {(sku, loc): SPREAD_STOCK for sku in skus for loc in locations}
    api = bench.start_api()
    consumer = bench.start_consumer()
    base = f"http://127.0.0.1:{api.port}"
    client = sync_redis(settings) if store.cluster else store.nodes()[0]
    offsets = store_for(settings).offsets

    def allocations_run(run_tag: str, seconds: float) -> Any:
        apply_events(projector, stock_events(hot, locations, HOT_STOCK, run_tag))
        for pair in ((sku, loc) for sku in hot for loc in locations):
            stock[pair] = stock.get(pair, 0) + HOT_STOCK
        post = lua_orders(bench.tmp / f"orders-{run_tag}.lua", skus, hot, run_tag)
        return run_wrk(base, connections=32, threads=2, duration_s=seconds, script=post,
                       headers=[AUTH])  # fmt: skip

    def caught_up(target: dict[str, int], limit_s: float = 900) -> float:
        """Wait until the consumer's stored offsets cover ``target``; when."""
        deadline = time.monotonic() + limit_s
        while True:
            stored = offsets()
            if all(stored.get(name, 0) >= at for name, at in target.items()):
                return time.perf_counter()
            if not consumer.alive or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the consumer did not catch up:\n{consumer.log.read_text()[-3000:]}"
                )
            time.sleep(0.05)

    for n in range(COLD_PASSES):
        allocations_run(f"{tag}-cold{n}", COLD_SECONDS)
    idle, busy, rates, longest, slow = [], [], [], [], []
    probes = Probes(bootstrap, f"bl-{tag}-probe", store.nodes()[0])
    # p99 of the broker's acknowledgement and of a Redis PING, per run: (idle, catching up)
    broker: list[tuple[float, float]] = []
    ping: list[tuple[float, float]] = []
    for run in range(args.runs):
        with timed(f"{store.label}: run {run + 1}/{args.runs}"):
            messages = generate(settings, events, FOLD_SIZES["full"]["skus"],
                                prefix=f"{tag}-r{run}-")  # fmt: skip
            with probes:
                idle.append(allocations_run(f"{tag}-idle{run}", size["seconds"]))
            quiet = (percentile(probes.broker_ms, 99), percentile(probes.redis_ms, 99))
            store.trace(slower_than_us=1000)
            started = time.perf_counter()
            target = produce_tracked(bootstrap, messages)
            produced = time.perf_counter()
            with probes:
                busy.append(allocations_run(f"{tag}-busy{run}", size["seconds"]))
            ended = time.perf_counter()
            broker.append((quiet[0], percentile(probes.broker_ms, 99)))
            ping.append((quiet[1], percentile(probes.redis_ms, 99)))
            done = caught_up(target)
            calls = store.script_calls({})
            store.stop_tracing()
            rates.append(events / (done - started))
            longest.append(max((c.duration_us / 1000 for c in calls), default=0.0))
            slow.append(sum(c.duration_us >= 5000 for c in calls))
            if done < ended:
                say(f"    caught up {ended - done:.1f}s before the allocations ended")
            say(f"    idle p50/p99 {idle[-1].latency_ms['50']:.1f}/"
                f"{idle[-1].latency_ms['99']:.1f} ms; catching up p50/p99 "
                f"{busy[-1].latency_ms['50']:.1f}/{busy[-1].latency_ms['99']:.1f} ms; "
                f"produced in {produced - started:.1f}s, caught up after "
                f"{done - started:.1f}s; longest script {longest[-1]:.0f} ms, "
                f"{slow[-1]} of 5 ms or more; probes p99 idle / catching up: broker "
                f"{broker[-1][0]:.1f} / {broker[-1][1]:.1f} ms, Redis PING {ping[-1][0]:.1f} / "
                f"{ping[-1][1]:.1f} ms")  # fmt: skip
            del messages
    bench.stop(consumer)
    bench.stop(api)  # the next layout's runs have the cores
    over, mismatched, short = check_orders(client, stock, set(hot), store_for(settings).layout)
    label = store.label
    base_name = "the same, consumer idle (same run)"
    report.add(Figure(f"single allocation @32 while catching up: p50, {label}", "ms",
                      [r.latency_ms["50"] for r in busy], base_name,
                      [r.latency_ms["50"] for r in idle], informative=True))  # fmt: skip
    report.add(Figure(f"single allocation @32 while catching up: p99, {label}", "ms",
                      [r.latency_ms["99"] for r in busy], base_name,
                      [r.latency_ms["99"] for r in idle], [("ratio", "<=", 2.0)]))  # fmt: skip
    report.add(Figure(f"  allocations/s while catching up, {label}", "req/s",
                      [r.requests_per_s for r in busy], base_name,
                      [r.requests_per_s for r in idle], informative=True))  # fmt: skip
    report.add(Figure(f"  catch-up of {events:,} events (produce to stored offsets), {label}",
                      "events/s", rates, informative=True))  # fmt: skip
    report.add(Figure(f"  broker acknowledgement (probe) p99 while catching up, {label}", "ms",
                      [b for _, b in broker], base_name, [a for a, _ in broker],
                      informative=True))  # fmt: skip
    report.add(Figure(f"  Redis PING (probe) p99 while catching up, {label}", "ms",
                      [b for _, b in ping], base_name, [a for a, _ in ping],
                      informative=True))  # fmt: skip
    report.add(Figure(f"  longest script while catching up, {label}", "ms", longest,
                      informative=True))  # fmt: skip
    report.add(Figure(f"  scripts of 5 ms or more while catching up, {label}", "calls",
                      [float(x) for x in slow], informative=True))  # fmt: skip
    report.add(Figure(f"(sku, location) reserved beyond its stock, {label}", "pairs",
                      [float(over)], targets=[("value", "<=", 0.0)]))  # fmt: skip
    report.add(Figure(f"skus whose projected reserved differs from the orders' holds, {label}",
                      "skus", [float(mismatched)], targets=[("value", "<=", 0.0)]))  # fmt: skip
    if short:
        report.notes.append(f"{label}: {short} orders of spread skus were not filled")
    client.close()


def backlog(args: Any, specs: Sequence[str]) -> int:
    """Single allocations while the consumer folds a backlog, beside the consumer idle."""
    from benchmarks.fold import SIZES as FOLD_SIZES

    size = SIZES[args.size]
    events = BACKLOG[args.size]
    report = Report("allocation-backlog", args.size,
                    "Single allocations while the consumer catches up on a backlog")  # fmt: skip
    report.parameters = {
        "backlog_events": events, "backlog_skus": FOLD_SIZES["full"]["skus"],
        "http_skus": size["http_skus"], "wrk_seconds": size["seconds"], "runs": args.runs,
        "stores": list(specs),
    }  # fmt: skip
    with Bench("allocation-backlog") as bench:
        bootstrap = bench.start_broker()
        for spec in specs:
            backlog_on(bench, bootstrap, spec, args, report)
    report.notes.append(
        "each run: allocations with the consumer idle, then the backlog produced and "
        "allocations for the same time while the consumer folds it; the backlog is on other "
        "skus than the orders', so what the orders wait for is Redis (one script at a time) "
        "and the machine's two cores, which the consumer, the API, wrk, the broker and Redis share"
    )
    report.finish()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    def options(parser: Any) -> None:
        parser.add_argument(
            "--backlog", action="store_true",
            help="instead: single allocations while the consumer catches up on a backlog, "
            "beside the consumer idle",
        )  # fmt: skip
        parser.add_argument(
            "--stores", default="single", metavar="SPECS",
            help=f"with --backlog, the Redis layouts to run on ({STORE_SPECS})",
        )  # fmt: skip

    args = parse_args(
        "allocation benchmark: vectorized batch vs reference; single over HTTP", argv, options
    )
    if args.backlog:
        specs = [x.strip() for x in args.stores.split(",") if x.strip()]
        stop_on_sigterm()
        ensure_wrk()
        return backlog(args, specs)
    stop_on_sigterm()
    size = SIZES[args.size]
    report = Report("allocation", args.size, "Allocation: batch vs reference, single over HTTP")
    report.parameters = {
        "lines": size["lines"], "skus": size["skus"], "channels": 5, "locations": LOCATIONS,
        "inbound_lines": size["inbound"], "runs": args.runs,
    }  # fmt: skip
    with timed("batch allocation"):
        fast, slow = time_batch(size, args.runs)
    report.add(Figure(
        f"batch of {size['lines']:,} lines: seconds", "s", fast, "plain-Python reference", slow,
        targets=[("value", "<", 0.2), ("ratio", "<=", 0.1)],
        target_text="< 0.2 s and <= 0.10x (10x faster)" if args.size == "full" else "<= 0.10x",
    ))  # fmt: skip
    report.add(Figure(
        "batch: lines/s", "lines/s", [size["lines"] / s for s in fast], "plain-Python reference",
        [size["lines"] / s for s in slow], targets=[("value", ">=", 500_000)] if args.size == "full" else [],
        informative=args.size != "full",
    ))  # fmt: skip
    ensure_wrk()
    with Bench("allocation") as bench:
        redis_url = bench.start_redis()
        bootstrap = bench.start_broker()
        settings = bench.write_config(
            bench_config(redis_url, bootstrap, ledger_dir=bench.tmp / "ledger"), create=True
        )
        skus = [f"A-{i:05d}" for i in range(size["http_skus"])]
        hot = [f"HOT-{i}" for i in range(HOT_SKUS)]
        locations = settings.channel("web").locations  # type: ignore[union-attr]
        projector = direct_projector(settings)
        apply_events(projector, stock_events(skus, locations, SPREAD_STOCK, "spread"))
        stock = {(sku, loc): SPREAD_STOCK for sku in skus for loc in locations}
        api = bench.start_api()
        base = f"http://127.0.0.1:{api.port}"
        client = bench.redis()
        get = lua_get_paths(bench.tmp / "get.lua", [f"/v1/availability/web/{s}" for s in skus])

        def allocations_run(tag: str, seconds: float) -> Any:
            # Hot skus get fresh stock before every run, so every run sells them out.
            apply_events(projector, stock_events(hot, locations, HOT_STOCK, tag))
            for pair in ((sku, loc) for sku in hot for loc in locations):
                stock[pair] = stock.get(pair, 0) + HOT_STOCK
            before = count_orders(client)
            post = lua_orders(bench.tmp / f"orders-{tag}.lua", skus, hot, tag)
            result = run_wrk(
                base, connections=32, threads=2, duration_s=seconds, script=post, headers=[AUTH]
            )
            settle(client)
            created = count_orders(client) - before
            # Answers still in flight when wrk stops are not counted by wrk but may create orders.
            if created < result.requests:
                raise RuntimeError(
                    f"{result.requests} requests created only {created} orders: repeats?"
                )
            return result

        cold = []
        for n in range(COLD_PASSES):
            cold.append(allocations_run(f"cold{n}", COLD_SECONDS))
            say(f"  cold pass {n + 1}/{COLD_PASSES}: allocations {cold[-1].requests_per_s:,.0f}/s "
                f"p99 {cold[-1].latency_ms['99']:.1f} ms")  # fmt: skip
        allocations, reads = [], []
        for run in range(args.runs):
            reads.append(
                run_wrk(
                    base,
                    connections=32,
                    threads=2,
                    duration_s=size["seconds"],
                    script=get,
                    headers=[AUTH],
                )
            )
            allocations.append(allocations_run(f"r{run}", size["seconds"]))
            say(f"  run {run + 1}/{args.runs}: allocations {allocations[-1].requests_per_s:,.0f}/s "
                f"p99 {allocations[-1].latency_ms['99']:.1f} ms; reads {reads[-1].requests_per_s:,.0f}/s")  # fmt: skip
        over, mismatched, short = check_orders(client, stock, set(hot))
        if short:
            raise RuntimeError(f"{short} orders of spread skus were not filled: raise SPREAD_STOCK")
        report.add(
            Figure(
                "single allocation over HTTP @32: p50",
                "ms",
                [a.latency_ms["50"] for a in allocations],
                "single-sku read, same run",
                [r.latency_ms["50"] for r in reads],
                informative=True,
            )
        )
        report.add(
            Figure(
                "single allocation over HTTP @32: p99",
                "ms",
                [a.latency_ms["99"] for a in allocations],
                "single-sku read, same run",
                [r.latency_ms["99"] for r in reads],
                targets=[("value", "<", 25.0)],
            )
        )
        report.add(
            Figure(
                "single allocation over HTTP @32: requests/s",
                "req/s",
                [a.requests_per_s for a in allocations],
                "single-sku read, same run",
                [r.requests_per_s for r in reads],
                informative=True,
            )
        )
        report.add(
            Figure(
                "cold passes (first allocations after start) @32: p99",
                "ms",
                [c.latency_ms["99"] for c in cold if c.requests],
                informative=True,
            )
        )
        report.add(
            Figure(
                "(sku, location) reserved beyond its stock, from the orders",
                "pairs",
                [float(over)],
                targets=[("value", "<=", 0.0)],
            )
        )
        report.add(
            Figure(
                "skus whose projected reserved differs from the orders' holds",
                "skus",
                [float(mismatched)],
                targets=[("value", "<=", 0.0)],
            )
        )
        report.parameters.update({
            "http_skus": len(skus), "hot_skus": HOT_SKUS, "hot_every": HOT_EVERY,
            "hot_stock_per_run": HOT_STOCK * len(locations), "spread_stock": SPREAD_STOCK * len(locations),
        })  # fmt: skip
        report.notes.append(
            "every 201 waited for the broker's acknowledgement of its reservation_created event (acks=all)"
        )
        report.notes.append(
            f"one order in {HOT_EVERY} goes to {HOT_SKUS} hot skus restocked with "
            f"{HOT_STOCK * len(locations)} units before every run (sold out under contention); "
            "every request created an order (no repeats)"
        )
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
