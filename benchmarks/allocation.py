"""Allocation benchmark: the vectorized batch against the plain-Python reference, and single
allocations over HTTP against the single-sku read, in the same run.

1. Batch: 100,000 lines over 50,000 skus, 5 channels (priorities 1-5), 8 locations, 30%
   backorder, 50,000 inbound lines (small: a tenth of that). ``allocation.allocate.allocate``
   and ``allocation.reference.allocate_reference`` on the same input; the results must be equal.
2. HTTP: ``POST /v1/allocations`` of one-line orders with distinct order ids at 32
   connections (wrk, its own process) against a real API, Redis and broker (every 201 waited
   for the broker's acknowledgement), beside ``GET /v1/availability/web/{sku}`` in the same
   run; afterwards no sku may be reserved beyond its on-hand stock.

``python -m benchmarks.allocation --size small|full``
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from allocation.allocate import allocate
from allocation.network import Network, Supply
from allocation.reference import allocate_reference
from atp_service import keys
from benchmarks.common import (
    API_KEY,
    Bench,
    Figure,
    Report,
    apply_events,
    bench_config,
    direct_projector,
    ensure_wrk,
    lua_get_paths,
    parse_args,
    run_wrk,
    say,
    stop_on_sigterm,
    timed,
)
from streams.events import decode

SIZES = {
    "small": {"lines": 10_000, "skus": 5_000, "inbound": 5_000, "http_skus": 200, "seconds": 4},
    "full": {"lines": 100_000, "skus": 50_000, "inbound": 50_000, "http_skus": 1000, "seconds": 10},
}
LOCATIONS = 8
TODAY = 20_000
AUTH = f"Authorization: Bearer {API_KEY}"


class _Channel:
    def __init__(self, name: str, priority: int, locations: Sequence[str], safety: int, horizon: int) -> None:
        self.name, self.priority, self.locations = name, priority, list(locations)
        self.safety_stock, self.inbound_horizon_days = safety, horizon


def batch_input(lines: int, skus: int, inbound: int, seed: int = 5) -> tuple[Supply, Network, tuple[Any, ...]]:
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
        for field in ("taken", "backordered", "promise_day", "promise_location", "unfilled", "reserved"):
            if not np.array_equal(getattr(ours, field), getattr(theirs, field)):
                raise AssertionError(f"vectorized and reference differ in {field}")
        say(f"  run {run + 1}/{runs}: vectorized {fast[-1] * 1000:.1f} ms, reference {slow[-1] * 1000:.0f} ms")
    return fast, slow


def lua_orders(path: Any, skus: Sequence[str]) -> Any:
    """wrk script: one-line web orders with distinct order ids, cycling through ``skus``."""
    table = ",".join(json.dumps(s) for s in skus)
    path.write_text(
        f"""
local skus = {{{table}}}
local n = 0
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function request()
  n = n + 1
  local sku = skus[(n % #skus) + 1]
  local body = '{{"order_id":"B' .. (tid or 0) .. '-' .. n .. '-' .. math.random(1, 1000000000) ..
    '","channel":"web","lines":[{{"line_id":"1","sku":"' .. sku .. '","quantity":1}}]}}'
  -- wrk.format replaces wrk.headers (which holds -H) when given a table: extend it instead.
  wrk.headers["Content-Type"] = "application/json"
  return wrk.format("POST", "/v1/allocations", wrk.headers, body)
end
"""
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("allocation benchmark: vectorized batch vs reference; single over HTTP", argv)
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
        locations = settings.channel("web").locations  # type: ignore[union-attr]
        events = [
            decode(json.dumps({
                "type": "bin_movement", "event_id": f"stock-{sku}-{loc}", "occurred_at": "2026-11-27T00:00:00Z",
                "sku": sku, "location": loc, "quantity": 40, "to_bin": "A-1", "to_status": "available",
            }).encode())
            for sku in skus for loc in locations
        ]  # fmt: skip
        apply_events(direct_projector(settings), events)
        api = bench.start_api()
        base = f"http://127.0.0.1:{api.port}"
        post = lua_orders(bench.tmp / "orders.lua", skus)
        get = lua_get_paths(bench.tmp / "get.lua", [f"/v1/availability/web/{s}" for s in skus])
        allocations, reads = [], []
        for run in range(args.runs):
            reads.append(run_wrk(base, connections=32, threads=2, duration_s=size["seconds"], script=get, headers=[AUTH]))
            allocations.append(run_wrk(base, connections=32, threads=2, duration_s=size["seconds"], script=post, headers=[AUTH]))
            say(f"  run {run + 1}/{args.runs}: allocations {allocations[-1].requests_per_s:,.0f}/s "
                f"p99 {allocations[-1].latency_ms['99']:.1f} ms; reads {reads[-1].requests_per_s:,.0f}/s")  # fmt: skip
        client = bench.redis()
        oversold = 0
        for sku in skus:
            doc = json.loads(client.hget(keys.sku_key(sku), "p:web") or b"{}")
            if doc and doc["reserved"] > doc["on_hand"]:
                oversold += 1
        report.add(Figure("single allocation over HTTP @32: p50", "ms", [a.latency_ms["50"] for a in allocations],
                          "single-sku read, same run", [r.latency_ms["50"] for r in reads], informative=True))
        report.add(Figure("single allocation over HTTP @32: p99", "ms", [a.latency_ms["99"] for a in allocations],
                          "single-sku read, same run", [r.latency_ms["99"] for r in reads],
                          targets=[("value", "<", 25.0)]))
        report.add(Figure("single allocation over HTTP @32: requests/s", "req/s",
                          [a.requests_per_s for a in allocations], "single-sku read, same run",
                          [r.requests_per_s for r in reads], informative=True))
        report.add(Figure("skus reserved beyond on hand after the run", "skus", [float(oversold)],
                          targets=[("value", "<=", 0.0)]))
        report.notes.append(
            "every 201 waited for the broker's acknowledgement of its reservation_created event (acks=all)"
        )
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
