"""Freshness benchmark: produce time to the new value readable over HTTP, under steady load.

The whole stack runs as it does in production: a Tansu broker, `atp consume`, and
`atp serve --workers 2` (with its read cache, whose staleness bound is
``api.cache_staleness_ms``, 250 ms by default). After the opening stock of 10k skus is
folded, a separate load process produces the realistic event mix at a steady rate
(small: 2,000 events/s, full: 20,000 events/s). Meanwhile a prober, every 100 ms, produces
a receipt of a known quantity for one of 20 probe skus (acks=all, flushed) and polls
GET /v1/availability/web/{sku} over one keep-alive connection (2 ms apart) until ``on_hand`` shows it.
The time from just before the produce to the 200 showing the value is one sample. Three
windows of ~10 s each give p50/p99 per window (median, min, max across windows). The windows
start once the consumer has caught up with the load (its stored offsets within 250 ms of
the events produced; at most 60 s are waited, then they run anyway and a note says so), so
they measure the steady state; the time that took is reported (a burst from the load
generator, starved of CPU, can leave a backlog at first).

Each sample is split by two more clocks on this machine: the document's ``as_of`` (when the
consumer started recomputing it) and the moment the write script's PUBLISH on the API's
invalidation channel named the probe sku (seen by a subscriber thread): produce -> written
to Redis is the broker + consumer part, written -> visible over HTTP the API's part.

For scale, the broker alone: a raw confluent-kafka consumer in its own process (a fresh
group, the service's consumer settings, from the latest offsets) records produce time ->
received for every message of the same load during the same windows. No consumer of this
broker can be fresher than that.

``python -m benchmarks.freshness --size small|full``
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
import msgspec
import redis
from confluent_kafka import Consumer, Producer

from atp_service.config import Settings
from atp_service.store import keys
from benchmarks.common import (
    API_KEY,
    LOCATIONS,
    Bench,
    Figure,
    Report,
    bench_config,
    channel_locations,
    parse_args,
    produce_all,
    say,
    stop_on_sigterm,
    stored_offsets_total,
    timed,
)
from benchmarks.workload import Workload, encoded, now_iso, sku_name
from streams.kafka import consumer_config

SIZES: dict[str, dict[str, Any]] = {
    "small": {"rate": 2_000, "skus": 10_000, "window_s": 10.0},
    "full": {"rate": 20_000, "skus": 10_000, "window_s": 10.0},
}
PROBE_EVERY_S = 0.1
PROBE_SKUS = 20
PROBE_TIMEOUT_S = 10.0
POLL_PAUSE_S = 0.002
STEADY_LAG_S = 0.25  # "caught up": stored offsets within this much of the load's events
STEADY_WAIT_S = 60.0  # the longest wait for that before the windows start anyway
CHANNEL = "web"
PROBE_LOCATION = LOCATIONS[0]  # one of web's locations


def load(
    bootstrap: str,
    topics: dict[str, str],
    n_skus: int,
    rate: float,
    seconds: float,
    result: Any,
    stop: Any,
    produced: Any,
) -> None:
    """The load process: the event mix at a steady rate, produced in 5 ms ticks, until
    ``stop`` is set (or ``seconds`` passed); ``produced`` counts the events so far."""
    skus = [sku_name(i) for i in range(1, n_skus + 1)]
    workload = Workload(skus, LOCATIONS, channel_locations(), seed=33, prefix="L")
    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 1_000_000,
    })  # fmt: skip
    sent = 0
    started = time.perf_counter()
    tick = 0.005
    behind_max = 0
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= seconds or stop.is_set():
            break
        due = int(rate * elapsed) - sent
        behind_max = max(behind_max, due)
        for _ in range(due):
            kind, key, value = encoded(workload.next_event())
            while True:
                try:
                    producer.produce(topics[kind], key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.01)
        sent += max(0, due)
        produced.value = sent
        producer.poll(0)
        pause = tick - (time.perf_counter() - started - elapsed)
        if pause > 0:
            time.sleep(pause)
    producer.flush(60)
    cpu = os.times()
    result.put({"sent": sent, "seconds": time.perf_counter() - started, "max_burst": behind_max,
                "cpu_s": cpu.user + cpu.system})  # fmt: skip


def broker_floor(
    bootstrap: str, topics: Sequence[str], seconds: float, result: Any, stop: Any
) -> None:
    """The broker's own latency: (produce time, produce time -> a raw consumer has the
    message), in ms since the epoch and ms."""
    config = consumer_config(bootstrap, f"floor-{os.getpid()}", 6000)
    config["auto.offset.reset"] = "latest"
    consumer = Consumer(config)
    consumer.subscribe(list(topics))
    latencies: list[tuple[float, float]] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not stop.is_set():
            for message in consumer.consume(num_messages=10_000, timeout=0.005):
                kind, stamp = message.timestamp()
                if message.error() is None and kind and stamp > 0:
                    latencies.append((stamp, time.time() * 1000 - stamp))
    finally:
        consumer.close()
    result.put(latencies)


def wait_steady(
    client: redis.Redis, settings: Settings, opening: int, produced: Any, rate: float
) -> float | None:
    """Seconds until the consumer's stored offsets are within STEADY_LAG_S of what the load
    produced so far, or None if that did not happen within STEADY_WAIT_S."""
    started = time.monotonic()
    while time.monotonic() - started < STEADY_WAIT_S:
        lag = produced.value + opening - stored_offsets_total(client, settings.kafka.group_id)
        if lag <= rate * STEADY_LAG_S:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def _as_of_ms(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


class WriteObserver:
    """Records when each probe sku's write script ran, from the service's own invalidation
    pub/sub channel (the write script PUBLISHes the skus it rewrote as its last step)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.written: dict[str, list[float]] = defaultdict(list)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="write-observer", daemon=True)

    def __enter__(self) -> WriteObserver:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("could not subscribe to the invalidation channel")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.ssubscribe(keys.SINGLE.invalidations(0))
        self._ready.set()
        try:
            while not self._stop.is_set():
                message = pubsub.get_sharded_message(timeout=0.2)
                if message is None:
                    continue
                at = time.perf_counter()
                data: bytes = message["data"]
                if b"PROBE-" not in data:
                    continue
                for sku in data.decode().split("\n"):
                    if sku.startswith("PROBE-"):
                        self.written[sku].append(at)
        finally:
            pubsub.close()

    def first_after(self, sku: str, t0: float) -> float | None:
        return next((t for t in self.written.get(sku, ()) if t > t0), None)


def probe_windows(
    settings: Settings, base: str, windows: int, window_s: float, observer: WriteObserver
) -> tuple[dict[str, list[list[float]]], int]:
    """Per window, in ms: end to end, produce -> recompute (as_of), produce -> written to
    Redis, written -> visible over HTTP; and the count of timeouts."""
    producer = Producer({
        "bootstrap.servers": settings.kafka.bootstrap, "linger.ms": 0, "acks": "all",
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
    })  # fmt: skip
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
    expected: dict[str, int] = {}
    out: dict[str, list[list[float]]] = {"total": [], "fold": [], "written": [], "http": []}
    timeouts = 0
    k = 0
    try:
        for _ in range(windows):
            total: list[float] = []
            fold: list[float] = []
            written: list[float] = []
            http: list[float] = []
            window_end = time.perf_counter() + window_s
            next_at = time.perf_counter()
            while time.perf_counter() < window_end:
                k += 1
                sku = f"PROBE-{k % PROBE_SKUS:03d}"
                quantity = 1 + k % 5
                expected[sku] = expected.get(sku, 0) + quantity
                event = {
                    "type": "bin_movement", "event_id": f"probe-{k}", "occurred_at": now_iso(),
                    "sku": sku, "location": PROBE_LOCATION, "quantity": quantity,
                    "from_bin": None, "from_status": None, "to_bin": "P-01", "to_status": "available",
                    "reservation_id": None,
                }  # fmt: skip
                wall_ms = time.time() * 1000
                t0 = time.perf_counter()
                producer.produce(
                    settings.topics.movements, key=sku.encode(), value=msgspec.json.encode(event)
                )
                producer.flush(10)
                path = f"/v1/availability/{CHANNEL}/{sku}"
                while True:
                    reply = client.get(path)
                    if reply.status_code == 200:
                        doc = msgspec.json.decode(reply.content)
                        if doc["on_hand"] == expected[sku]:
                            break
                    if time.perf_counter() - t0 > PROBE_TIMEOUT_S:
                        doc = None
                        break
                    time.sleep(POLL_PAUSE_S)  # do not let the prober itself load the 2 cores
                t1 = time.perf_counter()
                if doc is None:
                    # Not visible within the timeout: counted at the timeout (a lower bound).
                    timeouts += 1
                    total.append(PROBE_TIMEOUT_S * 1000)
                else:
                    total.append((t1 - t0) * 1000)
                    fold.append(_as_of_ms(doc["as_of"]) - wall_ms)
                    t_written = observer.first_after(sku, t0)
                    if t_written is not None:
                        written.append((t_written - t0) * 1000)
                        http.append((t1 - t_written) * 1000)
                next_at += PROBE_EVERY_S
                pause = next_at - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                else:
                    next_at = time.perf_counter()
            for name, values in (
                ("total", total),
                ("fold", fold),
                ("written", written),
                ("http", http),
            ):
                out[name].append(values)
            say(
                f"    window: {len(total)} probes, p50 {pct(total, 50):.1f} ms, p99 {pct(total, 99):.1f} ms"
            )
    finally:
        client.close()
        producer.flush(5)
    return out, timeouts


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("freshness benchmark: produce -> readable over HTTP, under steady load", argv)
    stop_on_sigterm()
    size = SIZES[args.size]
    windows = args.runs
    report = Report("freshness", args.size, "Freshness: produce -> new value over HTTP")
    report.parameters = {
        "load_events_per_s": size["rate"], "skus": size["skus"], "windows": windows,
        "window_s": size["window_s"], "probe_every_ms": int(PROBE_EVERY_S * 1000),
        "api_workers": 2, "channel": CHANNEL,
    }  # fmt: skip
    with Bench("freshness") as bench:
        redis_url = bench.start_redis()
        bootstrap = bench.start_broker()
        settings = bench.write_config(
            bench_config(
                redis_url,
                bootstrap,
                prefix="fresh",
                group_id="fresh",
                ledger_dir=bench.tmp / "ledger",
            ),
            create=True,
        )
        report.parameters["cache_staleness_ms"] = settings.api.cache_staleness_ms
        topics = {k: getattr(settings.topics, k) for k in ("movements", "reservations", "inbound")}
        skus = [sku_name(i) for i in range(1, size["skus"] + 1)]
        opening = [
            encoded(item)
            for item in Workload(skus, LOCATIONS, channel_locations(), seed=31).opening_stock()
        ]
        produce_all(bootstrap, [(topics[kind], key, value) for kind, key, value in opening])
        consumer = bench.start_consumer()
        api = bench.start_api()
        client = bench.redis()
        with timed(f"fold the opening stock ({len(opening)} events)"):
            deadline = time.monotonic() + 300
            while stored_offsets_total(client, settings.kafka.group_id) < len(opening):
                if not consumer.alive or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"consumer did not catch up:\n{consumer.log.read_text()[-3000:]}"
                    )
                time.sleep(0.1)
        # The windows start once the consumer has caught up with the load (steady state, as
        # the row asks), or after STEADY_WAIT_S regardless; how long that took is
        # reported. The load and the broker-alone consumer run until the windows end.
        seconds = windows * size["window_s"] + 3 + STEADY_WAIT_S
        context = multiprocessing.get_context("spawn")
        result = context.Queue()
        stop = context.Event()
        produced = context.Value("q", 0)
        loader = context.Process(
            target=load,
            args=(bootstrap, topics, size["skus"], size["rate"], seconds, result, stop, produced),
            daemon=True,
        )
        loader.start()
        floor_result = context.Queue()
        floor = context.Process(
            target=broker_floor,
            args=(bootstrap, list(topics.values()), seconds, floor_result, stop),
            daemon=True,
        )
        floor.start()
        try:
            time.sleep(2)  # let the load reach its steady rate
            with timed("wait for the consumer to catch up with the load"):
                steady_s = wait_steady(client, settings, len(opening), produced, size["rate"])
            cpu_before, wall_before = bench.cpu_seconds(), time.perf_counter()
            windows_from_ms = time.time() * 1000
            with timed(
                f"probe {windows} windows of {size['window_s']:.0f}s at {size['rate']:,} events/s"
            ):
                with WriteObserver(bench.redis()) as observer:
                    samples, timeouts = probe_windows(
                        settings,
                        f"http://127.0.0.1:{api.port}",
                        windows,
                        size["window_s"],
                        observer,
                    )
                totals = samples["total"]
            windows_to_ms = time.time() * 1000
            cpu_after, wall = bench.cpu_seconds(), time.perf_counter() - wall_before
            stop.set()
            loaded = result.get(timeout=seconds + 120)
            loader.join(30)
            floor_ms = [
                latency for stamp, latency in floor_result.get(timeout=seconds + 60)
                if windows_from_ms <= stamp <= windows_to_ms
            ]  # fmt: skip
            floor.join(30)
            lag = (
                loaded["sent"]
                + len(opening)
                + sum(len(t) for t in totals)
                - stored_offsets_total(client, settings.kafka.group_id)
            )
        finally:
            for process in (loader, floor):
                if process.is_alive():
                    process.terminate()
                    process.join(5)
        if not consumer.alive:
            raise RuntimeError(f"the consumer died:\n{consumer.log.read_text()[-3000:]}")

    def per_window(values: list[list[float]], p: float) -> list[float]:
        return [pct(v, p) for v in values if v]

    report.add(Figure("produce -> readable over HTTP: p50", "ms", per_window(totals, 50),
                      targets=[("value", "<", 20)]))  # fmt: skip
    report.add(Figure("produce -> readable over HTTP: p99", "ms", per_window(totals, 99),
                      targets=[("value", "<", 100)]))  # fmt: skip
    for label, name in (
        ("  produce -> recompute started (as_of)", "fold"),
        ("  produce -> written to Redis (write script's PUBLISH)", "written"),
        ("  written to Redis -> visible over HTTP", "http"),
    ):
        for p in (50, 99):
            report.add(
                Figure(f"{label}: p{p}", "ms", per_window(samples[name], p), informative=True)
            )
    for p in (50, 99):
        report.add(Figure(f"  broker alone, produce -> raw consumer (same load, same windows): p{p}", "ms",
                          [pct(floor_ms, p)], informative=True))  # fmt: skip
    cpu = {
        name: 100 * (cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0)) / wall
        for name in cpu_before
    }
    cpu["load producer process"] = 100 * loaded["cpu_s"] / loaded["seconds"]
    cpu = {(n.split("-")[0] if n.startswith("api-") else n): v for n, v in cpu.items()}
    report.details["cpu_percent_during_windows"] = cpu
    report.notes.append(
        "CPU during the windows (% of one core; 2 cores = 200%): "
        + ", ".join(f"{n} {v:.0f}%" for n, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        + f"; machine load average {os.getloadavg()[0]:.1f}"
    )
    report.add(Figure("load sustained by the producer", "events/s", [loaded["sent"] / loaded["seconds"]],
                      informative=True))  # fmt: skip
    report.add(
        Figure("consumer lag after the load stopped", "events", [float(lag)], informative=True)
    )
    if steady_s is None:
        report.notes.append(
            f"the consumer did not catch up with the load within {STEADY_WAIT_S:.0f} s (lag over "
            f"{STEADY_LAG_S * 1000:.0f} ms of events); the windows ran anyway"
        )
    else:
        report.add(Figure("consumer caught up with the load (windows start then)", "s", [steady_s],
                          informative=True))  # fmt: skip
    everything = [x for v in totals for x in v]
    report.series["produce -> HTTP percentiles, all probes"] = {
        "ms": {f"p{p}": pct(everything, p) for p in (50, 75, 90, 99)}
        | {"max": max(everything, default=0.0)}
    }
    report.series_unit["produce -> HTTP percentiles, all probes"] = "ms"
    report.series_kind["produce -> HTTP percentiles, all probes"] = "bar"
    report.details.update({
        "probes": sum(len(v) for v in totals), "timeouts": timeouts, "load": loaded,
        "samples_ms": samples, "broker_floor_messages": len(floor_ms),
    })  # fmt: skip
    if timeouts:
        report.notes.append(
            f"{timeouts} probes were not visible within {PROBE_TIMEOUT_S:.0f} s; they count as "
            f"{PROBE_TIMEOUT_S * 1000:,.0f} ms in the end-to-end percentiles (a lower bound)"
        )
    report.notes.append(
        f"{sum(len(v) for v in totals)} probes ({timeouts} timed out); the prober polls one keep-alive connection with "
        f"{POLL_PAUSE_S * 1000:.0f} ms pauses, so samples carry ~{POLL_PAUSE_S * 1000 + 1:.0f} ms of "
        "polling granularity; as_of has ms resolution."
    )
    report.notes.append(
        f"targets are the issue's (at 20,000 events/s); this run's load is {size['rate']:,} events/s."
    )
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
