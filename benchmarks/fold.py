"""Fold benchmark: broker -> decode -> fold -> projection -> atomic Redis write with offsets.

N events (10k skus, 8 locations, 5 channels; a realistic mix) are produced once to topics of
4 partitions on a local Tansu broker. Then, alternating, in the same run:

- baseline: a raw confluent-kafka consumer (the service's consumer settings, a fresh group)
  consuming all N messages and decoding each with ``streams.events.decode`` (msgspec);
- the real pipeline: ``atp_service.runtime.build_stream_projector(settings)`` -- the object
  `atp consume` runs -- with ``run()`` in a thread, on an empty Redis and a fresh group,
  until it has consumed all N (its stored offsets are checked to cover them afterwards).

Both are timed from the first non-empty batch to the last, so group join is excluded from
both. The pipeline's stages (decode, Redis read, fold, render + change set, ledger rows, Redis write,
outbox publish, Kafka commit) are timed by wrapping them in this process, not by editing
the service. The loop consumes, decodes and folds the next batch while a batch's Redis
write is in flight, so the stages' shares of the time can add up to more than 100%.

``python -m benchmarks.fold --size small|full``
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer

from atp_service.config import Settings, parse_config
from atp_service.runtime import build_stream_projector
from benchmarks.common import (
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
from benchmarks.workload import Workload, encoded, sku_name
from streams.consumer import folding as consumer_module
from streams.consumer import partitions as partitions_module
from streams.events import decode
from streams.kafka import consumer_config

SIZES = {"small": {"events": 50_000, "skus": 10_000}, "full": {"events": 500_000, "skus": 10_000}}
PARTITIONS = 4
STAGES = ("decode", "redis read", "fold", "render + change set", "ledger rows", "redis write",
          "outbox publish", "kafka commit")  # fmt: skip


def generate(settings: Settings, n_events: int, n_skus: int) -> list[tuple[str, bytes, bytes]]:
    skus = [sku_name(i) for i in range(1, n_skus + 1)]
    workload = Workload(skus, LOCATIONS, channel_locations(), seed=21)
    topics = {k: getattr(settings.topics, k) for k in ("movements", "reservations", "inbound")}
    messages: list[tuple[str, bytes, bytes]] = []
    for item in workload.opening_stock(locations_per_sku=2):
        if len(messages) >= n_events:
            break
        kind, key, value = encoded(item)
        messages.append((topics[kind], key, value))
    while len(messages) < n_events:
        kind, key, value = encoded(workload.next_event())
        messages.append((topics[kind], key, value))
    return messages


def raw_consume(settings: Settings, n: int, group_id: str) -> float:
    """Baseline: consume n messages and msgspec-decode each; events/s."""
    t = settings.topics
    consumer = Consumer(
        consumer_config(settings.kafka.bootstrap, group_id, settings.kafka.session_timeout_ms)
    )
    consumer.subscribe([t.movements, t.reservations, t.inbound])
    known = frozenset(c.name for c in settings.channels)
    batch, timeout = settings.consumer.batch_size, settings.consumer.batch_timeout_ms / 1000
    count = 0
    started: float | None = None
    deadline = time.monotonic() + 300
    try:
        while count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline consumer got {count} of {n} messages")
            messages = consumer.consume(num_messages=batch, timeout=timeout)
            if not messages:
                continue
            if started is None:
                started = time.perf_counter()
            for message in messages:
                if message.error() is None:
                    decode(message.value() or b"", known)
                    count += 1
        assert started is not None
        return n / (time.perf_counter() - started)
    finally:
        consumer.close()


def _timed(totals: dict[str, float], stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[stage] += time.perf_counter() - started

    return wrapper


def _processed(stats: Any) -> int:
    return int(stats.applied + stats.duplicates + stats.dead_lettered)


def command_stats(client: Any) -> dict[str, dict[str, float]]:
    """Redis server-side time per command since the last CONFIG RESETSTAT."""
    raw: dict[str, Any] = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): {"calls": float(v["calls"]), "usec": float(v["usec"])}
        for name, v in raw.items()
    }


def real_pipeline(
    settings: Settings, n: int, bench: Bench
) -> tuple[float, dict[str, float], dict[str, int], dict[str, dict[str, float]]]:
    """The consumer's StreamProjector.run() in a thread; events/s, seconds per stage, and
    the Redis server's own time per command."""
    client = bench.redis()
    client.flushall()
    client.config_resetstat()
    projector = build_stream_projector(settings)
    totals: dict[str, float] = defaultdict(float)
    window: dict[str, float] = {}
    projector.decode = _timed(totals, "decode", projector.decode)  # type: ignore[method-assign]
    projector.store.read = _timed(totals, "redis read", projector.store.read)  # type: ignore[method-assign]
    projector.store.write = _timed(totals, "redis write", projector.store.write)  # type: ignore[method-assign]
    projector.publish_outbox = _timed(totals, "outbox publish", projector.publish_outbox)  # type: ignore[method-assign]
    real_commit = partitions_module.commit
    partitions_module.commit = _timed(totals, "kafka commit", real_commit)  # type: ignore[assignment]
    ledger = getattr(projector, "ledger", None)
    if ledger is not None:
        ledger.stage = _timed(totals, "ledger rows", ledger.stage)
    process = projector.process

    def timed_process(messages: list[Any], *args: Any, **kwargs: Any) -> None:
        if "first" not in window:
            window["first"] = time.perf_counter()
            window["cpu"] = time.process_time()
        process(messages, *args, **kwargs)
        window["last"] = time.perf_counter()
        # All threads of the process: the Redis write runs on its own thread, overlapped
        # with the next batch's consume and decode; librdkafka's and the ledger's threads too.
        totals["consumer process CPU"] = time.process_time() - window["cpu"]

    projector.process = timed_process  # type: ignore[method-assign]
    # The fold step calls these module-level functions: wrap them for the run, restore after.
    patched = {"fold": "fold", "build_changeset": "render + change set"}
    original = {name: getattr(consumer_module, name) for name in patched}
    for name, stage in patched.items():
        setattr(consumer_module, name, _timed(totals, stage, original[name]))
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            projector.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="stream-projector", daemon=True)
    thread.start()
    deadline = time.monotonic() + 900
    try:
        # Applied, not consumed: the loop consumes the next batch before it applies it.
        while (done := _processed(projector.stats)) < n:
            if errors:
                raise RuntimeError(f"the stream projector failed: {errors[0]!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stream projector applied {done} of {n} messages")
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(60)
        for name, fn in original.items():
            setattr(consumer_module, name, fn)
        partitions_module.commit = real_commit  # type: ignore[assignment]
        projector.producer.producer.flush(10)
    stored = stored_offsets_total(client, settings.kafka.group_id)
    if stored != n:
        raise RuntimeError(f"Redis stored offsets cover {stored} messages, expected {n}")
    s = projector.stats
    if s.dead_lettered:
        raise RuntimeError(f"{s.dead_lettered} generated events were dead-lettered")
    elapsed = window["last"] - window["first"]
    counts = {"applied": s.applied, "duplicates": s.duplicates, "batches": s.batches,
              "prepared": s.prepared, "conflicts": s.conflicts, "published": s.published}  # fmt: skip
    totals["elapsed"] = elapsed
    server = command_stats(client)
    client.close()
    # Drop the wrappers (they hold the projector in a cycle) so its librdkafka clients are
    # destroyed now, while the broker still runs, not at exit.
    projector.__dict__.clear()
    gc.collect()
    return n / elapsed, dict(totals), counts, server


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("fold benchmark: the consumer pipeline vs raw consume + decode", argv)
    stop_on_sigterm()
    size = SIZES[args.size]
    n = size["events"]
    report = Report("fold", args.size, "Fold: broker -> decode -> fold -> projection -> Redis")
    with Bench("fold") as bench:
        redis_url = bench.start_redis()
        bootstrap = bench.start_broker()
        text = bench_config(
            redis_url,
            bootstrap,
            prefix="fold",
            group_id="fold-setup",
            ledger_dir=bench.tmp / "ledger",
        )
        settings = bench.write_config(text, create=True, partitions=PARTITIONS)
        report.parameters = {
            "events": n, "skus": size["skus"], "locations": len(LOCATIONS),
            "channels": len(settings.channels), "partitions": PARTITIONS,
            "batch_size": settings.consumer.batch_size, "runs": args.runs,
        }  # fmt: skip
        with timed(f"generate {n} events"):
            messages = generate(settings, n, size["skus"])
        with timed("produce"):
            produce_s = produce_all(bootstrap, messages)
        kinds: dict[str, int] = defaultdict(int)
        for _, _, value in messages:
            kinds[value[9 : value.index(b'"', 9)].decode()] += 1
        report.details["event_mix"] = dict(kinds)
        report.details["produce_events_per_s"] = n / produce_s
        baseline: list[float] = []
        pipeline: list[float] = []
        stages: list[dict[str, float]] = []
        counts: list[dict[str, int]] = []
        servers: list[dict[str, dict[str, float]]] = []
        for run in range(args.runs):
            order = ("baseline", "pipeline") if run % 2 == 0 else ("pipeline", "baseline")
            for which in order:
                with timed(f"run {run + 1}/{args.runs} {which}"):
                    if which == "baseline":
                        baseline.append(raw_consume(settings, n, f"raw-{run}"))
                        say(f"    {baseline[-1]:,.0f} events/s")
                    else:
                        run_settings = parse_config(
                            bench_config(
                                redis_url,
                                bootstrap,
                                prefix="fold",
                                group_id=f"fold-{run}",
                                ledger_dir=bench.tmp / f"ledger-{run}",
                            )
                        )
                        rate, stage, count, server = real_pipeline(run_settings, n, bench)
                        pipeline.append(rate)
                        stages.append(stage)
                        counts.append(count)
                        servers.append(server)
                        say(f"    {rate:,.0f} events/s")

    report.add(Figure("fold end to end (1 consumer process)", "events/s", pipeline,
                      "raw consume + msgspec decode", baseline,
                      [("ratio", ">=", 0.5), ("value", ">=", 100_000)],
                      target_text="x>= 0.50, >= 100,000/s"))  # fmt: skip
    per_stage = {
        st: statistics.median(s.get(st, 0.0) / s["elapsed"] for s in stages) for st in STAGES
    }
    busy = sum(per_stage.values())
    per_stage["consume + rest of loop"] = max(0.0, 1 - busy)
    for st, share in per_stage.items():
        us = statistics.median(s.get(st, 0.0) for s in stages) / n * 1e6 if st in STAGES else None
        label = f"  stage: {st}" + (f" ({us:.1f} us/event)" if us is not None else "")
        report.add(Figure(label, "% of time", [100 * share], informative=True))
    # CPU time is steadier than wall time on a shared machine: it says what one process
    # could reach if it never waited on Redis or the broker.
    cpu_us = [s.get("consumer process CPU", 0.0) / n * 1e6 for s in stages]
    report.add(Figure("  consumer process CPU per event", "us/event", cpu_us, informative=True))
    for label, commands in (
        ("read and write scripts (EVALSHA)", ("evalsha", "eval")),
        ("of which reads (HMGET, ZMSCORE)", ("hmget", "zmscore")),
    ):
        server_us = [sum(sv.get(c, {}).get("usec", 0.0) for c in commands) / n for sv in servers]
        report.add(Figure(f"  Redis server time: {label}", "us/event", server_us, informative=True))
    report.series["share of pipeline time (median run)"] = {
        "stage": {st.split(" ")[0]: 100 * share for st, share in per_stage.items()}
    }
    report.series_unit["share of pipeline time (median run)"] = "%"
    report.series_kind["share of pipeline time (median run)"] = "bar"
    report.details["stages_seconds"] = stages
    report.details["consumer_stats"] = counts
    report.details["redis_commandstats"] = servers
    if servers:
        top = sorted(servers[0].items(), key=lambda kv: -kv[1]["usec"])[:7]
        report.notes.append(
            "Redis server time per command, run 1 (calls from inside scripts included; EVALSHA "
            "is the whole script): "
            + ", ".join(f"{k} {v['usec'] / 1000:.0f} ms/{v['calls']:.0f} calls" for k, v in top)
        )
    report.notes.append(
        f"event mix: {', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}; "
        f"produced at {n / produce_s:,.0f} events/s"
    )
    report.notes.append(
        "both timed from the first non-empty batch to the last (group join excluded); the "
        "pipeline includes its sweeps, availability-event publishing and Kafka commits."
    )
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
