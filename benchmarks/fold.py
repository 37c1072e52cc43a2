"""Fold benchmark: broker -> decode -> fold -> projection -> atomic Redis write with offsets.

N events (10k skus, 8 locations, 5 channels; a realistic mix) are produced once to topics of
4 partitions on a local Tansu broker. Then, alternating, in the same run:

- baseline: a raw confluent-kafka consumer (the service's consumer settings, a fresh group)
  consuming all N messages and decoding each with ``streams.events.decode`` (msgspec);
- the real pipeline: ``atp_service.runtime.build_consumer_loop(settings)`` -- the object
  `atp consume` runs -- with ``run()`` in a thread, on an empty Redis and a fresh group,
  until it has consumed all N (its stored offsets are checked to cover them afterwards).

Both are timed from the first non-empty batch to the last, so group join is excluded from
both. The pipeline's stages (decode, Redis read, fold, render + change set, ledger rows, Redis write,
outbox publish, Kafka commit) are timed by wrapping them in this process, not by editing
the service. The loop consumes, decodes and folds the next batch while a batch's Redis
write is in flight, so the stages' shares of the time can add up to more than 100%. The
loop's sweeps before its first batch are left out of the stages.

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

With ``--kits`` the run adds another alternated measurement: the same pipeline on the same
topics with 10,000 kits (contract section 10) of 5 components each over 50,000 component
skus, each component in one kit with a quantity of 1 to 3. The components are a set of the
workload's skus whose events make ~20% of all events (drawn at random until they do) and,
for the rest, skus that get no events in the stream; all are spread over the kits at
random. Before each kits run, on its fresh Redis and untimed, the components with no events
get their opening stock (through the consumer's ``apply()``), the kits are installed
(``KitRecords.install``) and computed by one sweep, and the outbox that left is dropped; the
run's settings list the same kits as the config file's ``[[kits]]``, so the consumer's own
install at start finds them in force. Every write of a component then marks its kit due
(the write script's HKEYS of the component's hash of kits, run for every sku it writes)
and the consumer's sweep, every ``consumer.sweep_interval_ms`` in its loop, computes the due
kits from their components and writes them. Its figure is events/s beside the plain
pipeline's in the same run (target >= 0.8x), both timed from the first non-empty batch to
the return of the Redis write that stored the last produced offsets, as above; then,
informatively, how long after that write the due set held nothing due (every kit computed
from its components' final states). Afterwards a sample of kits is checked: each channel's
stored document (``p:<channel>`` of the kit's sku hash) has ``available_to_sell`` and
``on_hand`` equal to the least over its components of floor(the component's stored figure /
quantity). The sweep's own share (its reads of the due set, kit definitions and states, the
kit figures, render + change set, writes and outbox publishing) is timed beside the stages,
with how many batches were folded ahead during the previous write and how many of those
were used (a sweep that wrote moves the epoch, and the batch folded ahead is folded again).

With ``--stores single/16,single/64,cluster`` (issue 17) the plain pipeline also runs on
each of those Redis layouts, alternated with the runs on one Redis with one shard: ``[redis]
shards`` N on a redis-server of its own, or a local Redis Cluster of 3 primaries with no
replicas (16 shards unless ``cluster/N``). Its events/s is printed beside one Redis's
(target >= 0.8x for a cluster). On every layout, every script call (EVALSHA) the consumer
makes during the fold is taken from each primary's SLOWLOG (``slowlog-log-slower-than 0``,
set before the run and read after it): p50, p99 and max per call (targets p99 <= 5 ms, max
<= 20 ms), the skus each write script wrote (from its key count, as the benchmark saw the
store build the calls), the time per sku written, and the redis-server processes' CPU over
the run against the scripts' summed wall time (how much of a script's time is Redis' own
work rather than waiting for a core). ``consumer.batch_size`` and the messages per batch
are printed with them.

``python -m benchmarks.fold --size small|full [--backordered 0.05] [--kits]
[--stores SPECS]``
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import redis
from confluent_kafka import Consumer

from allocation.kits import KitComponent, KitDefinition
from atp_service.config import KitSettings, Settings, parse_config
from atp_service.local.services import create_topics
from atp_service.runtime import build_consumer_loop
from atp_service.store import keys
from atp_service.store import redis_store as redis_store_module
from atp_service.store.kit_records import KitRecords
from benchmarks.common import (
    LOCATIONS,
    STORE_SPECS,
    Bench,
    Figure,
    LandedWrites,
    Report,
    ScriptCall,
    Store,
    apply_events,
    bench_config,
    channel_locations,
    direct_projector,
    parse_args,
    percentile,
    produce_tracked,
    say,
    stop_on_sigterm,
    timed,
)
from benchmarks.workload import Workload, encoded, sku_name
from streams import backorders as backorders_module
from streams.consumer import folding as consumer_module
from streams.consumer import partitions as partitions_module
from streams.consumer import sweep as sweep_module
from streams.events import AnyEvent, decode
from streams.kafka import consumer_config

SIZES = {"small": {"events": 50_000, "skus": 10_000}, "full": {"events": 500_000, "skus": 10_000}}
PARTITIONS = 4
STAGES = ("decode", "redis read", "fold", "re-plan (backorders)", "render + change set",
          "ledger rows", "redis write", "outbox publish", "kafka commit")  # fmt: skip
# --kits: kits, their components (each in one kit), components per kit, and the share of
# the events whose sku is a component.
KITS, KIT_COMPONENTS, PER_KIT, KIT_EVENT_SHARE = 10_000, 50_000, 5, 0.20
KIT_CHECK_SAMPLE = 400  # kits whose stored documents are checked after each run
SWEEP_STAGES = ("redis read", "redis write", "render + change set", "outbox publish")


def generate(
    settings: Settings, n_events: int, n_skus: int, backordered: float = 0.0, prefix: str = "b"
) -> list[tuple[str, bytes, bytes]]:
    """The workload's events; ``prefix`` starts every event id (another one, new events)."""
    skus = [sku_name(i) for i in range(1, n_skus + 1)]
    workload = Workload(
        skus, LOCATIONS, channel_locations(), seed=21, backordered=backordered, prefix=prefix
    )
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


def _timed(
    totals: dict[str, float],
    stage: str,
    fn: Callable[..., Any],
    sweeping: dict[str, bool] | None = None,
) -> Callable[..., Any]:
    """``fn`` timed under ``stage``; with ``sweeping``, also under "sweep: <stage>" while
    ``sweeping["on"]`` (the sweep runs in the loop's thread, never beside a batch's write)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.perf_counter() - started
            totals[stage] += spent
            if sweeping is not None and sweeping["on"]:
                totals[f"sweep: {stage}"] += spent

    return wrapper


def _sweep_timed(
    totals: dict[str, float], sweeping: dict[str, bool], fn: Callable[..., Any]
) -> Callable[..., Any]:
    """The loop's sweep (its reads, kit figures, writes and outbox publishing), timed whole,
    with ``sweeping["on"]`` meanwhile so that the stages it calls count under it too."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        sweeping["on"] = True
        try:
            return fn(*args, **kwargs)
        finally:
            sweeping["on"] = False
            totals["sweep"] += time.perf_counter() - started
            totals["sweeps"] += 1

    return wrapper


def _drop_sweeps(totals: dict[str, float]) -> None:
    """Take what the sweeps so far added out of ``totals``."""
    for key in [k for k in totals if k.startswith("sweep: ")]:
        stage = key.removeprefix("sweep: ")
        if stage in totals:
            totals[stage] -= totals[key]
        totals[key] = 0.0
    for key in ("sweep", "sweeps", "kits computed", "sweep conflicts"):
        totals[key] = 0.0


def _kits_timed(totals: dict[str, float], fn: Callable[..., Any]) -> Callable[..., Any]:
    """The sweep's with_kits (kit figures and documents), and how many kits it computed."""

    def wrapper(states: Any, definitions: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(states, definitions, *args, **kwargs)
        finally:
            totals["sweep: kit figures"] += time.perf_counter() - started
            totals["kits computed"] += len(definitions)

    return wrapper


def _conflicts_counted(
    totals: dict[str, float], sweeping: dict[str, bool], fn: Callable[..., Any]
) -> Callable[..., Any]:
    """The store's write, counting the sweep's writes refused for a moved component."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        conflicts = fn(*args, **kwargs)
        if sweeping["on"] and conflicts:
            totals["sweep conflicts"] += 1
        return conflicts

    return wrapper


def _processed(stats: Any) -> int:
    return int(stats.applied + stats.duplicates + stats.dead_lettered)


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
        totals["re-plan events"] += sum(len(ids) for ids in replanned.event_ids.values())
        totals["re-planned orders"] += len(replanned.orders)
        return out

    return wrapper


@dataclass
class KitSetup:
    """The ``--kits`` mode's kits, and the opening stock of their components that get no
    events in the stream."""

    definitions: list[KitDefinition]
    event_components: frozenset[str]  # workload skus that are components
    share: float  # of the events, on a component
    stock: list[AnyEvent]  # decoded

    @classmethod
    def make(cls, messages: Sequence[tuple[str, bytes, bytes]], seed: int = 31) -> KitSetup:
        rng = random.Random(seed)
        per_sku = Counter(key.decode() for _, key, _ in messages)
        order = sorted(per_sku)
        rng.shuffle(order)
        chosen: list[str] = []
        on_chosen = 0
        for sku in order:
            if on_chosen >= KIT_EVENT_SHARE * len(messages):
                break
            chosen.append(sku)
            on_chosen += per_sku[sku]
        quiet = [f"CMP-{i:07d}" for i in range(1, KIT_COMPONENTS - len(chosen) + 1)]
        components = chosen + quiet
        rng.shuffle(components)
        definitions = [
            KitDefinition(
                f"KIT-{k + 1:06d}",
                tuple(
                    KitComponent(sku, rng.randint(1, 3))
                    for sku in components[k * PER_KIT : (k + 1) * PER_KIT]
                ),
            )
            for k in range(KITS)
        ]
        workload = Workload(quiet, LOCATIONS, channel_locations(), seed=seed, prefix="k")
        stock = [decode(encoded(item)[2]) for item in workload.opening_stock(locations_per_sku=2)]
        return cls(definitions, frozenset(chosen), on_chosen / len(messages), stock)

    def settings(self, settings: Settings) -> Settings:
        """``settings`` with these kits as the config file's ``[[kits]]`` (set on the parsed
        settings: parse_config's validation of 10,000 kits is not what is measured)."""
        kits = tuple(KitSettings(sku=k.sku, components=k.components) for k in self.definitions)
        return msgspec.structs.replace(settings, kits=kits)

    def prepare(self, settings: Settings, client: redis.Redis) -> dict[str, float]:
        """On an empty Redis: stock the quiet components, install the kits, compute them all
        once (a sweep, as the consumer's) and drop the outbox that leaves; seconds each."""
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        projector = direct_projector(settings)
        apply_events(projector, self.stock)
        seconds["stock"] = time.perf_counter() - started
        started = time.perf_counter()
        KitRecords(client).install(self.definitions, time.time_ns() // 1_000_000)
        seconds["install"] = time.perf_counter() - started
        started = time.perf_counter()
        projector.sweeper.sweep(projector.clock, projector._write, 600.0)
        seconds["first sweep"] = time.perf_counter() - started
        due = int(client.zcount(keys.SINGLE.due_key(0), "-inf", time.time_ns() // 1_000_000))
        due += int(client.zcard(keys.SINGLE.kits_due_key(0)))
        if due:
            raise RuntimeError(f"{due} skus still due after the kits' first sweep")
        client.delete(keys.SINGLE.outbox_key(0))
        projector.__dict__.clear()
        return seconds

    def check(self, client: redis.Redis, channels: Sequence[str], seed: int) -> int:
        """Check a sample of kits' stored documents against their components' (most with a
        component that gets events); how many (kit, channel) documents were checked."""
        rng = random.Random(seed)
        busy: list[KitDefinition] = []
        quiet: list[KitDefinition] = []
        for kit in self.definitions:
            moves = any(c.sku in self.event_components for c in kit.components)
            (busy if moves else quiet).append(kit)
        sample = rng.sample(busy, min(len(busy), KIT_CHECK_SAMPLE * 3 // 4))
        sample += rng.sample(quiet, min(len(quiet), KIT_CHECK_SAMPLE - len(sample)))
        fields = [f"p:{channel}" for channel in channels]
        pipe = client.pipeline(transaction=False)
        for kit in sample:
            pipe.hmget(keys.SINGLE.sku_key(kit.sku), fields)
            for c in kit.components:
                pipe.hmget(keys.SINGLE.sku_key(c.sku), fields)
        replies = iter(pipe.execute())
        checked = 0
        wrong: list[str] = []
        for kit in sample:
            own = next(replies)
            parts = [(next(replies), c.quantity) for c in kit.components]
            for i, channel in enumerate(channels):
                if own[i] is None:
                    wrong.append(f"{kit.sku} has no {channel} document")
                    continue
                document = json.loads(own[i])
                for figure in ("available_to_sell", "on_hand"):
                    expected = min(
                        (json.loads(doc[i])[figure] if doc[i] is not None else 0) // q
                        for doc, q in parts
                    )
                    if document[figure] != expected:
                        wrong.append(
                            f"{kit.sku} {channel} {figure} {document[figure]} != {expected}"
                        )
                checked += 1
        if wrong:
            raise RuntimeError(
                f"{len(wrong)} kit documents differ from their components': {wrong[:5]}"
            )
        return checked


def _wait_drained(client: redis.Redis, failed: Callable[[], BaseException | None]) -> float:
    """Block until nothing is due (every kit computed: none in the due set, and no count of
    kits whose components were written); when, perf_counter."""
    deadline = time.monotonic() + 600
    while client.zcount(
        keys.SINGLE.due_key(0), "-inf", time.time_ns() // 1_000_000
    ) or client.zcard(keys.SINGLE.kits_due_key(0)):
        error = failed()
        if error is not None:
            raise RuntimeError(f"the stream projector failed: {error!r}")
        if time.monotonic() > deadline:
            raise RuntimeError("the due set still held due skus 600 s after the last write")
        time.sleep(0.005)
    return time.perf_counter()


def real_pipeline(
    settings: Settings,
    n: int,
    store: Store,
    target: dict[str, int] | None = None,
    kits: KitSetup | None = None,
    drain: bool = False,
) -> tuple[float, dict[str, float], dict[str, int], dict[str, dict[str, float]], list[ScriptCall]]:
    """The consumer's ConsumerLoop.run() in a thread, on ``store`` (emptied first);
    events/s, seconds per stage, the Redis server's own time per command, and every script
    call (EVALSHA) as the primaries' SLOWLOG timed it, with the skus it wrote or read.

    With ``target`` (the next offset of every partition produced to), timed to the return
    of the write that stored them all, and checked against the offsets stored in Redis;
    else (the default) until it applied n messages, timed to the end of the last batch.
    With ``kits``, those are made ready first (``KitSetup.prepare``, untimed) and checked
    after; with ``drain`` (and ``target``), the consumer runs on until the due set holds
    nothing due, and how long after that write it took is the stage "due set empty"."""
    if kits is not None and (target is None or not drain):
        raise ValueError("a kits run is timed to ``target`` and drained before its check")
    if kits is not None and (store.cluster or store.shards != 1):
        raise ValueError("the kits runs are on one Redis with one shard")
    store.flush()
    client = store.nodes()[0]  # the kits' setup and checks (one Redis)
    totals: dict[str, float] = defaultdict(float)
    if kits is not None:
        for what, spent in kits.prepare(settings, client).items():
            totals[f"kits setup: {what}"] = spent
        gc.collect()
    store.trace()
    redis_cpu = store.cpu_seconds()
    projector = build_consumer_loop(settings)
    # The write script's key count -> the skus it writes, to name the SLOWLOG's calls.
    skus_by_keys: dict[int, int] = {}
    real_write_calls = redis_store_module.write_calls

    def write_calls(*args: Any, **kwargs: Any) -> Iterator[tuple[list[str], list[Any]]]:
        for key_list, arguments in real_write_calls(*args, **kwargs):
            skus_by_keys[len(key_list)] = int(arguments[0])
            yield key_list, arguments

    redis_store_module.write_calls = write_calls  # type: ignore[assignment]
    window: dict[str, float] = {}
    sweeping = {"on": False}
    projector.decode = _timed(totals, "decode", projector.decode)  # type: ignore[method-assign]
    projector.store.read = _timed(totals, "redis read", projector.store.read, sweeping)  # type: ignore[method-assign]
    projector.store.write = _timed(totals, "redis write", projector.store.write, sweeping)  # type: ignore[method-assign]
    projector.store.write = _conflicts_counted(totals, sweeping, projector.store.write)  # type: ignore[method-assign]
    projector.store.due = _timed(totals, "sweep: due set", projector.store.due)  # type: ignore[method-assign]
    projector.store.kits = _timed(totals, "sweep: kit definitions", projector.store.kits)  # type: ignore[method-assign]
    landed = LandedWrites()
    if target is not None:
        projector.store.write = landed.wrap(projector.store.write)  # type: ignore[method-assign]
    projector.publish_outbox = _timed(totals, "outbox publish", projector.publish_outbox, sweeping)  # type: ignore[method-assign]
    projector.sweep = _sweep_timed(totals, sweeping, projector.sweep)  # type: ignore[method-assign]
    prepare = projector._prepare

    def folded_ahead(batch: Any) -> Any:
        prepared = prepare(batch)
        totals["folded ahead"] += prepared is not None
        return prepared

    projector._prepare = folded_ahead  # type: ignore[method-assign]
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
            _drop_sweeps(totals)  # the loop sweeps from its start, before any message
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
    original_with_kits = sweep_module.with_kits
    consumer_module.fold = _timed(totals, "fold", original["fold"])  # type: ignore[assignment]
    consumer_module.build_replanned = _replanned_timed(totals, original["build_replanned"])  # type: ignore[assignment]
    backorders_module.build_changeset = _timed(  # type: ignore[assignment]
        totals, "render + change set", original_changeset, sweeping
    )
    sweep_module.with_kits = _kits_timed(totals, original_with_kits)  # type: ignore[assignment]
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
            if drain:
                # The stages to the write above; the sweeps after it are "drain: sweep".
                at_landing = dict(totals)
                window["drained"] = _wait_drained(client, lambda: errors[0] if errors else None)
                totals["drain: sweep"] = totals["sweep"] - at_landing.get("sweep", 0.0)
                totals["drain: kits computed"] = totals["kits computed"] - at_landing.get(
                    "kits computed", 0.0
                )
                totals.update({k: v for k, v in at_landing.items() if k in totals})
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
        sweep_module.with_kits = original_with_kits  # type: ignore[assignment]
        partitions_module.commit = real_commit  # type: ignore[assignment]
        redis_store_module.write_calls = real_write_calls  # type: ignore[assignment]
        projector.producer.producer.flush(10)
    stored_offsets = projector.store.offsets()  # the group's, on any store
    if target is None:
        stored = sum(stored_offsets.values())
        if stored != n:
            raise RuntimeError(f"Redis stored offsets cover {stored} messages, expected {n}")
    else:
        behind = [k for k, v in target.items() if stored_offsets.get(k, 0) < v]
        if behind:
            raise RuntimeError(f"Redis stored offsets are behind what was produced at {behind}")
    s = projector.stats
    if s.dead_lettered:
        raise RuntimeError(f"{s.dead_lettered} generated events were dead-lettered")
    elapsed = window["landed" if target is not None else "last"] - window["first"]
    counts = {"applied": s.applied, "duplicates": s.duplicates, "batches": s.batches,
              "folded ahead": int(totals.pop("folded ahead", 0)), "prepared": s.prepared,
              "conflicts": s.conflicts, "published": s.published,
              "re-plan events": int(totals.pop("re-plan events", 0)),
              "re-planned orders": int(totals.pop("re-planned orders", 0)),
              "swept": s.swept, "sweeps": int(totals.pop("sweeps", 0)),
              "kits computed": int(totals.pop("kits computed", 0)),
              "kits computed after the last write": int(totals.pop("drain: kits computed", 0)),
              "sweep conflicts": int(totals.pop("sweep conflicts", 0))}  # fmt: skip
    totals["elapsed"] = elapsed
    if "drained" in window:
        totals["due set empty"] = window["drained"] - window["landed"]
    if kits is not None:
        counts["kit documents checked"] = kits.check(
            client, [c.name for c in settings.channels], seed=7
        )
    server = store.command_stats()
    totals["redis CPU"] = store.cpu_seconds() - redis_cpu
    shas = {
        projector.store._write.sha: "write",
        projector.store._read.sha: "read",
        projector.store._advance.sha: "advance",
    }
    scripts = store.script_calls(shas)
    for call in scripts:
        if call.kind == "write":
            call.skus = skus_by_keys.get(call.keys, -1)
        elif call.kind == "read":
            call.skus = call.keys // 2  # a sku hash and its dedupe marks each
    store.stop_tracing()
    client.close()
    # Drop the wrappers (they hold the projector in a cycle) so its librdkafka clients are
    # destroyed now, while the broker still runs, not at exit.
    projector.__dict__.clear()
    gc.collect()
    return n / elapsed, dict(totals), counts, server, scripts


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


Runs = tuple[
    list[float], list[dict[str, float]], list[dict[str, int]], list[dict[str, dict[str, float]]]
]


def _server_us(
    runs: list[dict[str, dict[str, float]]], commands: Sequence[str], n: int
) -> list[float]:
    return [sum(sv.get(c, {}).get("usec", 0.0) for c in commands) / n for sv in runs]


def add_kits(report: Report, kits: KitSetup, n: int, measured: Runs, plain: Runs) -> None:
    rates, stages, counts, servers = measured
    plain_rates, plain_stages, plain_counts, plain_servers = plain
    report.add(Figure(f"fold end to end, {KITS:,} kits ({kits.share:.0%} of events on a "
                      "component)", "events/s", rates,
                      "the same pipeline, no kits (same run)", plain_rates,
                      [("ratio", ">=", 0.8)], target_text="x>= 0.80"))  # fmt: skip
    report.add(Figure(
        "  kits: due set empty, after the last offsets' write", "s",
        [s["due set empty"] for s in stages], "no kits",
        [s.get("due set empty", 0.0) for s in plain_stages], informative=True,
    ))  # fmt: skip

    def per_event(st: str, runs: list[dict[str, float]]) -> list[float]:
        return [s.get(st, 0.0) / n * 1e6 for s in runs]

    def fold_only(st: str, runs: list[dict[str, float]]) -> list[float]:
        return [(s.get(st, 0.0) - s.get(f"sweep: {st}", 0.0)) / n * 1e6 for s in runs]

    for st in ("decode", "fold", "render + change set", "redis read", "redis write"):
        report.add(Figure(f"  kits: {st}, outside the sweep", "us/event",
                          fold_only(st, stages), "no kits", fold_only(st, plain_stages),
                          informative=True))  # fmt: skip
    for st in ("sweep", "sweep: due set", "sweep: kit definitions", "sweep: redis read",
               "sweep: kit figures", "sweep: render + change set", "sweep: redis write",
               "sweep: outbox publish", "consumer process CPU"):  # fmt: skip
        report.add(Figure(f"  kits: {st}", "us/event", per_event(st, stages), "no kits",
                          per_event(st, plain_stages), informative=True))  # fmt: skip
    for label, commands in (
        ("read and write scripts (EVALSHA)", ("evalsha", "eval")),
        ("HKEYS (in the write script)", ("hkeys",)),
    ):
        report.add(Figure(f"  kits: Redis server time, {label}", "us/event",
                          _server_us(servers, commands, n), "no kits",
                          _server_us(plain_servers, commands, n), informative=True))  # fmt: skip
    report.details["kits_stages_seconds"] = stages
    report.details["kits_consumer_stats"] = counts
    report.details["kits_redis_commandstats"] = servers
    quiet = KIT_COMPONENTS - len(kits.event_components)
    report.notes.append(
        f"kits: {KITS:,} kits of {PER_KIT} components (quantity 1-3) over {KIT_COMPONENTS:,} "
        f"components, each in one kit: {len(kits.event_components):,} workload skus with "
        f"{kits.share:.1%} of the events, and {quiet:,} skus that get no events (opening "
        "stock folded before the run); per run (kits | no kits): batches "
        f"{[c['batches'] for c in counts]} | {[c['batches'] for c in plain_counts]}, folded "
        f"ahead during the previous write {[c['folded ahead'] for c in counts]} | "
        f"{[c['folded ahead'] for c in plain_counts]}, of which used (not folded again) "
        f"{[c['prepared'] for c in counts]} | {[c['prepared'] for c in plain_counts]}, "
        "sweeps to the last write "
        f"{[c['sweeps'] for c in counts]}, kits computed to it "
        f"{[c['kits computed'] for c in counts]} and after it "
        f"{[c['kits computed after the last write'] for c in counts]}, sweep writes refused "
        f"{[c['sweep conflicts'] for c in counts]}; HKEYS calls "
        f"{[round(sv.get('hkeys', {}).get('calls', 0)) for sv in servers]}; kit documents "
        f"checked against their components {[c['kit documents checked'] for c in counts]}; "
        "setup before each run (untimed): "
        + ", ".join(
            f"{k.removeprefix('kits setup: ')} {statistics.median(s[k] for s in stages):.1f}s"
            for k in stages[0]
            if k.startswith("kits setup: ")
        )
    )
    report.notes.append(
        "kits: the stages of the kits runs (and of the plain runs beside them) are summed to "
        "the write that stored the last offsets; the sweep's reads, render and writes count "
        "under 'sweep: ...' and are taken out of the stages 'outside the sweep'"
    )


# Issue 17: how long one script may hold Redis (every read and allocation waits meanwhile).
SCRIPT_P99_MS, SCRIPT_MAX_MS = 5.0, 20.0
# Skus per write script, lower bounds (a last step may write none).
SKU_BUCKETS = (0, 1, 8, 16, 32, 64, 200, 1000)


def _ms(calls: Sequence[ScriptCall], kind: str | None = None) -> list[float]:
    return [c.duration_us / 1000 for c in calls if kind is None or c.kind == kind]


def script_summary(calls: Sequence[ScriptCall]) -> str:
    """One line on a run's script calls: all of them, and the write script's."""
    every, writes = _ms(calls), [c for c in calls if c.kind == "write"]
    skus = [c.skus for c in writes if c.skus >= 0]
    return (
        f"{len(every)} script calls, p50 {percentile(every, 50):.2f} / p99 "
        f"{percentile(every, 99):.1f} / max {max(every, default=0):.1f} ms; {len(writes)} "
        f"writes of {statistics.median(skus) if skus else 0:,.0f} skus (median)"
    )


def add_stores(
    report: Report,
    stores: dict[str, Store],
    pipeline: list[float],
    store_rates: dict[str, list[float]],
    scripts: dict[str, list[list[ScriptCall]]],
    counts: dict[str, list[dict[str, int]]],
    redis_cpu: dict[str, list[float]],
    n: int,
) -> None:
    """Fold events/s on each other store, and every store's script time per call (SLOWLOG),
    beside one Redis with one shard in the same run."""
    base = "the same pipeline on one Redis, 1 shard (same run)"
    for spec, rates in store_rates.items():
        store = stores[spec]
        targets = [("ratio", ">=", 0.8)] if store.cluster else []
        report.add(Figure(f"fold end to end on {store.label}", "events/s", rates, base, pipeline,
                          targets, informative=not targets))  # fmt: skip
    single = scripts["single"]
    for spec, runs in scripts.items():
        label = stores[spec].label
        baseline = "one Redis, 1 shard (same run)" if spec != "single" else ""
        for name, p, targets in (
            ("p50", 50.0, []),
            ("p99", 99.0, [("value", "<=", SCRIPT_P99_MS)]),
            ("max", 100.0, [("value", "<=", SCRIPT_MAX_MS)]),
        ):
            report.add(Figure(
                f"script (EVALSHA) per call, {name}: {label}", "ms",
                [percentile(_ms(calls), p) for calls in runs], baseline,
                [percentile(_ms(calls), p) for calls in single] if baseline else [],
                targets,  # type: ignore[arg-type]
            ))  # fmt: skip
        for kind in ("write", "read"):
            report.add(Figure(
                f"  {kind} script per call, p99 / max: {label}", "ms",
                [percentile(_ms(calls, kind), 99) for calls in runs],
                "the same, max", [max(_ms(calls, kind), default=0.0) for calls in runs],
                informative=True,
            ))  # fmt: skip
        report.add(Figure(
            f"  skus per write script (median): {label}", "skus",
            [statistics.median([c.skus for c in calls if c.kind == "write"] or [0])
             for calls in runs], informative=True,
        ))  # fmt: skip
        report.add(Figure(
            f"  write script time per sku written (median call): {label}", "us/sku",
            [statistics.median([c.duration_us / c.skus for c in calls
                                if c.kind == "write" and c.skus > 0] or [0.0])
             for calls in runs], informative=True,
        ))  # fmt: skip
        report.add(Figure(
            f"  Redis CPU over the run / the scripts' wall time: {label}", "share",
            [cpu / max(1e-9, sum(_ms(calls)) / 1000)
             for cpu, calls in zip(redis_cpu[spec], runs, strict=True)], informative=True,
        ))  # fmt: skip
        report.add(Figure(
            f"  script calls per run (write / all): {label}", "calls",
            [sum(c.kind == "write" for c in calls) for calls in runs], "all scripts",
            [len(calls) for calls in runs], informative=True,
        ))  # fmt: skip
    # How the write script's time grows with the skus it writes, over every store's calls.
    writes = [c for runs in scripts.values() for calls in runs for c in calls
              if c.kind == "write" and c.skus >= 0]  # fmt: skip
    buckets: dict[str, list[float]] = defaultdict(list)
    for c in writes:
        low = max(b for b in SKU_BUCKETS if b <= c.skus)
        buckets[f">={low}"].append(c.duration_us / 1000)
    rows = {k: buckets[k] for k in (f">={b}" for b in SKU_BUCKETS) if k in buckets}
    if rows:
        title = "write script: ms per call by skus written (median, all stores)"
        report.series[title] = {"median": {k: statistics.median(v) for k, v in rows.items()},
                                "max": {k: max(v) for k, v in rows.items()}}  # fmt: skip
        report.series_unit[title] = "ms"
        report.series_kind[title] = "bar"
        report.notes.append(
            "write script time by skus it wrote (calls, median / p99 / max ms): "
            + "; ".join(f"{k} skus: {len(v)}, {statistics.median(v):.2f} / "
                        f"{percentile(v, 99):.2f} / {max(v):.2f}" for k, v in rows.items())
        )  # fmt: skip
    slowest = sorted(writes, key=lambda c: c.duration_us, reverse=True)[:8]
    if slowest:
        report.notes.append("slowest write scripts (ms, skus written, keys): " + ", ".join(
            f"{c.duration_us / 1000:.1f} ({c.skus}, {c.keys})" for c in slowest))  # fmt: skip
    per_sku = [c.duration_us / c.skus for c in writes if c.skus >= 16]
    if per_sku:
        rate = statistics.median(per_sku)
        report.notes.append(
            f"write scripts of 16 skus or more: median {rate:.0f} us per sku written (wall "
            f"time, {len(per_sku)} calls), so the p99 target of {SCRIPT_P99_MS:g} ms is about "
            f"{SCRIPT_P99_MS * 1000 / rate:,.0f} skus per script at that rate"
        )
    for spec, runs in counts.items():
        batches = [c["batches"] for c in runs]
        report.notes.append(
            f"{stores[spec].label}: consumer batches per run {batches} "
            f"({statistics.median(n / b for b in batches if b):,.0f} messages per batch, median)"
        )
    report.details["script_calls"] = {
        spec: [[(c.kind, c.duration_us, c.skus, c.node) for c in calls] for calls in runs]
        for spec, runs in scripts.items()
    }
    report.notes.append(
        "script time: each primary's SLOWLOG (slowlog-log-slower-than 0, max-len 1,000,000; "
        "checked not to overflow) over the whole run, EVALSHA calls only (the consumer's read, "
        "write and offsets scripts, named by sha1); a Redis Cluster has 3 primaries and no "
        "replicas, on this machine's cores with everything else"
    )


def main(argv: Sequence[str] | None = None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--backordered", type=float, default=0.0, metavar="SHARE",
            help="also fold the workload with this share of its reservations made as atp's "
            "backorders (e.g. 0.05), beside the plain one",
        )  # fmt: skip
        parser.add_argument(
            "--stores", default="single", metavar="SPECS",
            help="comma-separated Redis layouts to fold into, each beside one Redis with one "
            f"shard (single) in the same run: {STORE_SPECS}; e.g. single/16,single/64,cluster",
        )  # fmt: skip
        parser.add_argument(
            "--kits", action="store_true",
            help=f"also fold it with {KITS:,} kits over {KIT_COMPONENTS:,} components defined, "
            f"a component in {KIT_EVENT_SHARE * 100:.0f}%% of the events, beside the plain one",
        )  # fmt: skip

    args = parse_args(
        "fold benchmark: the consumer pipeline vs raw consume + decode", argv, options
    )
    if not 0.0 <= args.backordered <= 1.0:
        raise SystemExit("--backordered is a share, between 0 and 1")
    backordered: float = args.backordered
    specs = ["single"] + [x for x in (t.strip() for t in args.stores.split(",")) if x != "single"]
    for spec in specs:
        Store.parse(spec)  # a wrong spec stops here, before anything starts
    if len(specs) > 1 and (backordered or args.kits):
        raise SystemExit("--stores runs the plain workload only: not with --backordered or --kits")
    stop_on_sigterm()
    size = SIZES[args.size]
    n = size["events"]
    report = Report("fold", args.size, "Fold: broker -> decode -> fold -> projection -> Redis")
    with Bench("fold") as bench:
        stores = {spec: bench.start_store(spec) for spec in specs}
        single = stores["single"]
        redis_url = single.url
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
            "stores": specs,
        }  # fmt: skip
        with timed(f"generate {n} events"):
            messages = generate(settings, n, size["skus"])
        with timed("produce"):
            started = time.perf_counter()
            produced = produce_tracked(bootstrap, messages)
            produce_s = time.perf_counter() - started
        kit_setup: KitSetup | None = None
        if args.kits:
            with timed(f"choose {KIT_COMPONENTS:,} components of {KITS:,} kits"):
                kit_setup = KitSetup.make(messages)
            report.parameters.update(kits=KITS, kit_components=KIT_COMPONENTS,
                                     components_per_kit=PER_KIT,
                                     events_on_a_component=round(kit_setup.share, 4))  # fmt: skip
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
        scripts: dict[str, list[list[ScriptCall]]] = {spec: [] for spec in specs}
        store_rates: dict[str, list[float]] = {spec: [] for spec in specs[1:]}
        store_counts: dict[str, list[dict[str, int]]] = {spec: [] for spec in specs}
        redis_cpu: dict[str, list[float]] = {spec: [] for spec in specs}
        store_stages: dict[str, list[dict[str, float]]] = {spec: [] for spec in specs[1:]}
        bo_rates: list[float] = []
        bo_stages: list[dict[str, float]] = []
        bo_counts: list[dict[str, int]] = []
        kit_rates: list[float] = []
        kit_stages: list[dict[str, float]] = []
        kit_counts: list[dict[str, int]] = []
        kit_servers: list[dict[str, dict[str, float]]] = []
        kinds_run = (["baseline", "pipeline"] + (["backordered"] if backordered else [])
                     + (["kits"] if kit_setup else [])
                     + [f"store {spec}" for spec in specs[1:]])  # fmt: skip

        def run_config(prefix: str, group_id: str, ledger: str, store: Store = single) -> Settings:
            """A run's settings: its own group and ledger (and topics, with ``prefix``)."""
            text = bench_config(
                store.url, bootstrap, prefix=prefix, group_id=group_id,
                ledger_dir=bench.tmp / ledger, redis_table=store.redis_table,
            )  # fmt: skip
            return parse_config(text)

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
                    fresh = run_config(
                        f"fold-{tag}{run}", f"fold-{tag}-{run}", f"ledger-{tag}-{run}"
                    )
                    source = bo_messages if which == "backordered" else messages
                    fresh_target = produce_fresh(bootstrap, settings, fresh, source)
                with timed(f"run {run + 1}/{args.runs} {which}"):
                    if which == "backordered":
                        assert fresh is not None
                        rate, stage, count, _, _ = real_pipeline(fresh, n, single, fresh_target)
                        bo_rates.append(rate)
                        bo_stages.append(stage)
                        bo_counts.append(count)
                        say(f"    {rate:,.0f} events/s; re-plan events {count['re-plan events']:,}")
                    elif which == "kits":
                        assert kit_setup is not None
                        kit_settings = kit_setup.settings(
                            run_config("fold", f"fold-kits-{run}", f"ledger-kits-{run}")
                        )
                        rate, stage, count, server, _ = real_pipeline(
                            kit_settings, n, single, produced, kit_setup, drain=True
                        )
                        kit_rates.append(rate)
                        kit_stages.append(stage)
                        kit_counts.append(count)
                        kit_servers.append(server)
                        say(f"    {rate:,.0f} events/s; due set empty "
                            f"{stage['due set empty']:.2f}s after the last write; "
                            f"kits computed {count['kits computed']:,} "
                            f"(+{count['kits computed after the last write']:,} after)")  # fmt: skip
                    elif which.startswith("store "):
                        spec = which.removeprefix("store ")
                        tag = Store.tag(spec)
                        rate, stage, count, _, calls = real_pipeline(
                            run_config("fold", f"fold-{tag}-{run}", f"ledger-{tag}-{run}",
                                       stores[spec]),
                            n, stores[spec],
                        )  # fmt: skip
                        store_rates[spec].append(rate)
                        store_counts[spec].append(count)
                        redis_cpu[spec].append(stage["redis CPU"])
                        store_stages[spec].append(stage)
                        scripts[spec].append(calls)
                        say(f"    {rate:,.0f} events/s; {script_summary(calls)}")
                    elif which == "baseline":
                        baseline.append(raw_consume(settings, n, f"raw-{run}"))
                        say(f"    {baseline[-1]:,.0f} events/s")
                    else:
                        run_settings = fresh or run_config("fold", f"fold-{run}", f"ledger-{run}")
                        # With --kits, timed as the kits runs: to the write that stored
                        # the last produced offsets.
                        plain_target = fresh_target or (produced if kit_setup else None)
                        rate, stage, count, server, calls = real_pipeline(
                            run_settings, n, single, plain_target, drain=kit_setup is not None
                        )
                        pipeline.append(rate)
                        stages.append(stage)
                        counts.append(count)
                        servers.append(server)
                        scripts["single"].append(calls)
                        store_counts["single"].append(count)
                        redis_cpu["single"].append(stage["redis CPU"])
                        say(f"    {rate:,.0f} events/s; {script_summary(calls)}")

    report.add(Figure("fold end to end (1 consumer process)", "events/s", pipeline,
                      "raw consume + msgspec decode", baseline,
                      [("ratio", ">=", 0.5), ("value", ">=", 100_000)],
                      target_text="x>= 0.50, >= 100,000/s"))  # fmt: skip
    if backordered:
        add_backordered(report, backordered, n, bo_rates, bo_stages, bo_counts, pipeline, stages)
    if kit_setup is not None:
        add_kits(report, kit_setup, n, (kit_rates, kit_stages, kit_counts, kit_servers),
                 (pipeline, stages, counts, servers))  # fmt: skip
    add_stores(report, stores, pipeline, store_rates, scripts, store_counts, redis_cpu, n)
    for spec, runs in store_stages.items():  # where the time goes, beside one Redis
        for st in ("redis read", "redis write", "outbox publish", "consumer process CPU"):
            report.add(Figure(f"  {stores[spec].label}: {st}", "us/event",
                              [s.get(st, 0.0) / n * 1e6 for s in runs], "one Redis, 1 shard",
                              [s.get(st, 0.0) / n * 1e6 for s in stages], informative=True))  # fmt: skip
    report.details["store_stages_seconds"] = store_stages
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
