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

With ``--backordered F`` (e.g. 0.05) the run adds a third measurement, alternated with the
other two: the same pipeline on the same generator and seed, with a share F of its
reservation_created events made as atp's own backorders (``Workload.backordered``: id
``<order>:1:<location>:backorder``, event_id ``atp-alloc:<id>``, ``placed_at`` set; never
shipped or released, so the two streams part after the first one, with the same mix), so
every fold of a sku holding an open claim re-plans it (``streams.backorders``) and the
conversions go out through the outbox to the reservations topic, where the consumer reads
them back as duplicates. That workload is produced to fresh topics before each of its runs
(its re-plan events land on its reservations topic: a second run would apply them as new),
and so is the plain one for its pipeline runs in this mode (the raw baseline keeps reading
the topics produced once). Its figure is events/s beside the plain workload's in the same run (target >= 0.9x); both
are then timed from the first non-empty batch to the return of the Redis write that stored
the last produced offset of every partition (offsets from the producer's delivery reports;
the broker's own high watermarks are wrong on Tansu 0.6.0), since the consumer's own
re-plan events arrive after the input.

``python -m benchmarks.fold --size small|full [--backordered 0.05]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer

from atp_service.config import Settings, parse_config
from atp_service.local.services import create_topics
from atp_service.runtime import build_stream_projector
from atp_service.store import keys
from benchmarks.common import (
    LOCATIONS,
    Bench,
    Figure,
    LandedWrites,
    Report,
    bench_config,
    channel_locations,
    parse_args,
    produce_tracked,
    say,
    stop_on_sigterm,
    stored_offsets_total,
    timed,
)
from benchmarks.workload import Workload, encoded, sku_name
from streams import backorders as backorders_module
from streams.consumer import folding as consumer_module
from streams.consumer import partitions as partitions_module
from streams.events import decode
from streams.kafka import consumer_config

SIZES = {"small": {"events": 50_000, "skus": 10_000}, "full": {"events": 500_000, "skus": 10_000}}
PARTITIONS = 4
STAGES = ("decode", "redis read", "fold", "re-plan (backorders)", "render + change set",
          "ledger rows", "redis write", "outbox publish", "kafka commit")  # fmt: skip


def generate(
    settings: Settings, n_events: int, n_skus: int, backordered: float = 0.0
) -> list[tuple[str, bytes, bytes]]:
    skus = [sku_name(i) for i in range(1, n_skus + 1)]
    workload = Workload(skus, LOCATIONS, channel_locations(), seed=21, backordered=backordered)
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


def _replanned_timed(totals: dict[str, float], fn: Callable[..., Any]) -> Callable[..., Any]:
    """The fold step's build_replanned, less the render + change set it calls (timed on
    their own), and what it re-planned."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        inner = totals["render + change set"]
        out = fn(*args, **kwargs)
        spent = time.perf_counter() - started
        totals["re-plan (backorders)"] += spent - (totals["render + change set"] - inner)
        replanned = out[1]
        totals["re-plan events"] += sum(len(e) for e in replanned.events.values())
        totals["re-planned orders"] += len(replanned.orders)
        return out

    return wrapper


def real_pipeline(
    settings: Settings, n: int, bench: Bench, target: dict[str, int] | None = None
) -> tuple[float, dict[str, float], dict[str, int], dict[str, dict[str, float]]]:
    """The consumer's StreamProjector.run() in a thread; events/s, seconds per stage, and
    the Redis server's own time per command.

    With ``target`` (the next offset of every partition produced to), timed to the return
    of the write that stored them all, and checked against the offsets stored in Redis;
    else (the default) until it applied n messages, timed to the end of the last batch."""
    client = bench.redis()
    client.flushall()
    client.config_resetstat()
    projector = build_stream_projector(settings)
    totals: dict[str, float] = defaultdict(float)
    window: dict[str, float] = {}
    projector.decode = _timed(totals, "decode", projector.decode)  # type: ignore[method-assign]
    projector.store.read = _timed(totals, "redis read", projector.store.read)  # type: ignore[method-assign]
    projector.store.write = _timed(totals, "redis write", projector.store.write)  # type: ignore[method-assign]
    landed = LandedWrites()
    if target is not None:
        projector.store.write = landed.wrap(projector.store.write)  # type: ignore[method-assign]
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
    # build_replanned (the fold step's since 12608c5) calls build_changeset in its module.
    original = {name: getattr(consumer_module, name) for name in ("fold", "build_replanned")}
    original_changeset = backorders_module.build_changeset
    consumer_module.fold = _timed(totals, "fold", original["fold"])  # type: ignore[assignment]
    consumer_module.build_replanned = _replanned_timed(totals, original["build_replanned"])  # type: ignore[assignment]
    backorders_module.build_changeset = _timed(totals, "render + change set", original_changeset)  # type: ignore[assignment]
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
        if target is not None:
            window["landed"] = landed.wait(target, 900, lambda: errors[0] if errors else None)
        # Applied, not consumed: the loop consumes the next batch before it applies it.
        while target is None and (done := _processed(projector.stats)) < n:
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
        backorders_module.build_changeset = original_changeset  # type: ignore[assignment]
        partitions_module.commit = real_commit  # type: ignore[assignment]
        projector.producer.producer.flush(10)
    if target is None:
        stored = stored_offsets_total(client, settings.kafka.group_id)
        if stored != n:
            raise RuntimeError(f"Redis stored offsets cover {stored} messages, expected {n}")
    else:
        raw: dict[bytes, bytes] = client.hgetall(keys.offsets_key(settings.kafka.group_id))  # type: ignore[assignment]
        behind = [k for k, v in target.items() if int(raw.get(k.encode(), 0)) < v]
        if behind:
            raise RuntimeError(f"Redis stored offsets are behind what was produced at {behind}")
    s = projector.stats
    if s.dead_lettered:
        raise RuntimeError(f"{s.dead_lettered} generated events were dead-lettered")
    elapsed = window["landed" if target is not None else "last"] - window["first"]
    counts = {"applied": s.applied, "duplicates": s.duplicates, "batches": s.batches,
              "prepared": s.prepared, "conflicts": s.conflicts, "published": s.published,
              "re-plan events": int(totals.pop("re-plan events", 0)),
              "re-planned orders": int(totals.pop("re-planned orders", 0))}  # fmt: skip
    totals["elapsed"] = elapsed
    server = command_stats(client)
    client.close()
    # Drop the wrappers (they hold the projector in a cycle) so its librdkafka clients are
    # destroyed now, while the broker still runs, not at exit.
    projector.__dict__.clear()
    gc.collect()
    return n / elapsed, dict(totals), counts, server


def produce_fresh(
    bootstrap: str,
    settings: Settings,
    fresh: Settings,
    messages: Sequence[tuple[str, bytes, bytes]],
) -> dict[str, int]:
    """Create ``fresh``'s topics and produce ``messages`` (made for ``settings``' topics)
    to them; the next offset of every partition written to."""
    t = fresh.topics
    create_topics(bootstrap, t.names(), partitions=PARTITIONS)
    rename = {
        getattr(settings.topics, k): getattr(t, k) for k in ("movements", "reservations", "inbound")
    }
    return produce_tracked(bootstrap, [(rename[topic], k, v) for topic, k, v in messages])


def add_backordered(
    report: Report,
    share: float,
    n: int,
    rates: list[float],
    stages: list[dict[str, float]],
    counts: list[dict[str, int]],
    plain_rates: list[float],
    plain_stages: list[dict[str, float]],
) -> None:
    plain = "the same pipeline, plain workload (same run)"
    report.add(Figure(f"fold end to end, {share:.0%} of reservations backordered", "events/s",
                      rates, plain, plain_rates, [("ratio", ">=", 0.9)],
                      target_text="x>= 0.90"))  # fmt: skip
    for st in ("fold", "re-plan (backorders)", "render + change set", "redis write",
               "outbox publish", "consumer process CPU"):  # fmt: skip
        report.add(Figure(
            f"  {share:.0%} backordered: {st}", "us/event",
            [s.get(st, 0.0) / n * 1e6 for s in stages], "plain workload",
            [s.get(st, 0.0) / n * 1e6 for s in plain_stages], informative=True,
        ))  # fmt: skip
    report.details["backordered_stages_seconds"] = stages
    report.details["backordered_consumer_stats"] = counts
    backorders = report.details.get("backorders_in_workload", 0)
    report.notes.append(
        f"{share:.0%} backordered: {backorders:,} backorders in {n:,} events; per run, re-plan "
        f"events written {[c['re-plan events'] for c in counts]}, orders re-planned "
        f"{[c['re-planned orders'] for c in counts]}; both pipelines timed to the write that "
        "stored the last produced offsets, so the re-plan events the consumer reads back (as "
        "duplicates, after the input) are outside the timed window"
    )


def main(argv: Sequence[str] | None = None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--backordered", type=float, default=0.0, metavar="SHARE",
            help="also fold the workload with this share of its reservations made as atp's "
            "backorders (e.g. 0.05), beside the plain one",
        )  # fmt: skip

    args = parse_args(
        "fold benchmark: the consumer pipeline vs raw consume + decode", argv, options
    )
    if not 0.0 <= args.backordered <= 1.0:
        raise SystemExit("--backordered is a share, between 0 and 1")
    backordered: float = args.backordered
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
            started = time.perf_counter()
            produce_tracked(bootstrap, messages)
            produce_s = time.perf_counter() - started
        bo_messages: list[tuple[str, bytes, bytes]] = []
        if backordered:
            with timed(f"generate {n} events, {backordered:.0%} of reservations backordered"):
                bo_messages = generate(settings, n, size["skus"], backordered)
            report.parameters["backordered"] = backordered
            report.details["backorders_in_workload"] = sum(
                b'"placed_at"' in value for _, _, value in bo_messages
            )
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
        bo_rates: list[float] = []
        bo_stages: list[dict[str, float]] = []
        bo_counts: list[dict[str, int]] = []
        kinds_run = ["baseline", "pipeline"] + (["backordered"] if backordered else [])
        for run in range(args.runs):
            shift = run % len(kinds_run)
            for which in kinds_run[shift:] + kinds_run[:shift]:
                fresh: Settings | None = None
                fresh_target: dict[str, int] = {}
                if backordered and which != "baseline":
                    # Fresh topics for both workloads: the backordered one's re-plan events
                    # land on its reservations topic (a second run would apply them as new),
                    # and the plain one is consumed from the same kind of fresh log.
                    tag = "bo" if which == "backordered" else "plain"
                    fresh = parse_config(
                        bench_config(
                            redis_url,
                            bootstrap,
                            prefix=f"fold-{tag}{run}",
                            group_id=f"fold-{tag}-{run}",
                            ledger_dir=bench.tmp / f"ledger-{tag}-{run}",
                        )
                    )
                    source = bo_messages if which == "backordered" else messages
                    fresh_target = produce_fresh(bootstrap, settings, fresh, source)
                with timed(f"run {run + 1}/{args.runs} {which}"):
                    if which == "backordered":
                        assert fresh is not None
                        rate, stage, count, _ = real_pipeline(fresh, n, bench, fresh_target)
                        bo_rates.append(rate)
                        bo_stages.append(stage)
                        bo_counts.append(count)
                        say(f"    {rate:,.0f} events/s; re-plan events {count['re-plan events']:,}")
                    elif which == "baseline":
                        baseline.append(raw_consume(settings, n, f"raw-{run}"))
                        say(f"    {baseline[-1]:,.0f} events/s")
                    else:
                        run_settings = fresh or parse_config(
                            bench_config(
                                redis_url,
                                bootstrap,
                                prefix="fold",
                                group_id=f"fold-{run}",
                                ledger_dir=bench.tmp / f"ledger-{run}",
                            )
                        )
                        rate, stage, count, server = real_pipeline(
                            run_settings, n, bench, fresh_target or None
                        )
                        pipeline.append(rate)
                        stages.append(stage)
                        counts.append(count)
                        servers.append(server)
                        say(f"    {rate:,.0f} events/s")

    report.add(Figure("fold end to end (1 consumer process)", "events/s", pipeline,
                      "raw consume + msgspec decode", baseline,
                      [("ratio", ">=", 0.5), ("value", ">=", 100_000)],
                      target_text="x>= 0.50, >= 100,000/s"))  # fmt: skip
    if backordered:
        add_backordered(report, backordered, n, bo_rates, bo_stages, bo_counts, pipeline, stages)
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
