"""Re-planning benchmark: a receipt wave that converts open backorders, beside the same wave
folded with no backorders (contract section 9: backorders follow supply).

Set-up, for each of S skus (1,000 full, 200 small), on a fresh Redis, fresh topics (4
partitions) and a fresh consumer group, folded by the consumer's own ``ConsumerLoop``
(``atp_service.runtime.build_consumer_loop``, ``run()`` in a thread, as the fold
benchmark runs it):

- one inbound line (an ``inbound`` event) at DC-01, due in 5 days (within the web channel's
  14-day horizon), for as many units as the sku's backorders claim;
- then 10 one-line orders per sku on the web channel, as the service records them after a
  ``POST /v1/allocations`` with ``backorder: true`` and nothing on hand: the order record in
  Redis (``atp:v3:order:<id>``) and a ``reservation_created`` event with event_id
  ``atp-alloc:<rid>``, reservation_id ``<order>:1:DC-01:backorder``, ``placed_at`` (distinct
  per order, so the queue has an order) and ``promise_date`` (the inbound line's eta, which
  is what the planner promises: the set-up's own fold re-plans nothing, and this is checked).

The inbound lines are produced and folded first, then the reservations (different topics
are consumed independently: a claim folded before its inbound line would be re-planned to
no promise, and back). Then the receipt wave is timed: one ``bin_movement`` per sku into
DC-01 for exactly the units its backorders claim. Each sku's fold then converts all 10
claims to stock reservations in the same write (a release and a create event per claim
queued in the outbox for the reservations topic, the line records, a notice per order for
the allocation-updates topic).

Baseline, the same run: the same skus, inbound lines, orders and quantities, but made as
plain stock reservations (no ``placed_at``, id ``<order>:1:DC-01``), so the states hold as
many reservations and the wave is the same messages; nothing to re-plan.

Timed the same way for both, from just before the wave's first message is produced (by a
producer connected beforehand) to the moment the write that carried the last of the wave's
offsets returned: the consumer stores its offsets in the same atomic Redis write as the
states, projection and re-plan, so stored offsets covering every partition's end of the
wave mean every sku's plan is updated (recorded in the write thread, by wrapping the
store's ``write``). Afterwards, not timed, the stored offsets are read back from Redis and
every sku's state is checked: no open backorder claim left, and the stock reservations
hold every claimed unit (baseline: the receipt is on hand). Informative: until the outbox
is empty (every availability event, re-plan event and order notice acknowledged by the
broker), and the number of notices on the allocation-updates topic.

``python -m benchmarks.replan --size small|full``
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import msgspec
import redis
from confluent_kafka import Producer

from atp_service.config import Settings, parse_config
from atp_service.local.services import create_topics
from atp_service.model import projector_for
from atp_service.orders import (
    Held,
    LineAllocation,
    LineResult,
    OrderLine,
    OrderRequest,
    OrderResult,
    StoredOrder,
    encode_stored,
    fingerprint,
)
from atp_service.runtime import build_consumer_loop
from atp_service.store import keys
from benchmarks.common import (
    Bench,
    Figure,
    LandedWrites,
    Report,
    bench_config,
    count_messages,
    parse_args,
    produce_tracked,
    say,
    stop_on_sigterm,
    timed,
)
from benchmarks.workload import sku_name
from streams.backorders import build_replanned, open_claims
from streams.consumer import folding as consumer_module
from streams.consumer.folding import events_by_sku
from streams.events import decode
from streams.fold import fold
from streams.state import US_PER_DAY, load_state, to_day

SIZES = {"small": {"skus": 200}, "full": {"skus": 1_000}}
PER_SKU = 10  # backorders (orders) per sku
PARTITIONS = 4
CHANNEL, LOCATION, ETA_DAYS = "web", "DC-01", 5
VARIANTS = ("baseline", "backorders")
_encode = msgspec.json.encode


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class Order:
    order_id: str
    sku: str
    quantity: int
    placed_at: datetime

    def reservation_id(self, backorder: bool) -> str:
        return f"{self.order_id}:1:{LOCATION}" + (":backorder" if backorder else "")


@dataclass
class Setup:
    skus: list[str]
    orders: dict[str, list[Order]]  # sku -> its orders, oldest first
    eta: str
    claimed: dict[str, int] = field(default_factory=dict)  # sku -> units its orders hold

    @classmethod
    def make(cls, n_skus: int, seed: int = 7) -> Setup:
        rng = random.Random(seed)
        skus = [sku_name(i) for i in range(1, n_skus + 1)]
        start = datetime.now(UTC) - timedelta(hours=1)
        orders: dict[str, list[Order]] = {}
        n = 0
        for sku in skus:
            orders[sku] = []
            for _ in range(PER_SKU):
                n += 1
                placed = start + timedelta(milliseconds=n)
                orders[sku].append(Order(f"BO-{n:07d}", sku, rng.randint(1, 5), placed))
        eta = (datetime.now(UTC) + timedelta(days=ETA_DAYS)).date().isoformat()
        setup = cls(skus, orders, eta)
        setup.claimed = {sku: sum(o.quantity for o in orders[sku]) for sku in skus}
        return setup

    @property
    def n_orders(self) -> int:
        return len(self.skus) * PER_SKU

    def inbound(self, topic: str) -> list[tuple[str, bytes, bytes]]:
        now = iso(datetime.now(UTC))
        out = []
        for sku in self.skus:
            event = {
                "type": "inbound", "event_id": f"inb-{sku}", "occurred_at": now,
                "inbound_id": f"PO-1:{sku}", "sku": sku, "location": LOCATION,
                "quantity": self.claimed[sku], "eta": self.eta,
            }  # fmt: skip
            out.append((topic, sku.encode(), _encode(event)))
        return out

    def reservations(self, topic: str, backorder: bool) -> list[tuple[str, bytes, bytes]]:
        out = []
        for sku in self.skus:
            for order in self.orders[sku]:
                rid = order.reservation_id(backorder)
                event: dict[str, Any] = {
                    "type": "reservation_created", "event_id": f"atp-alloc:{rid}",
                    "occurred_at": iso(order.placed_at), "reservation_id": rid, "sku": sku,
                    "channel": CHANNEL, "location": LOCATION, "quantity": order.quantity,
                    "expires_at": None,
                }  # fmt: skip
                if backorder:
                    event["placed_at"] = iso(order.placed_at)
                    event["promise_date"] = self.eta
                out.append((topic, sku.encode(), _encode(event)))
        return out

    def order_records(self, backorder: bool) -> dict[str, bytes]:
        """What the API stores for each order (``atp:v3:order:<id>``), so the publisher
        sends each notice with the order's current result, as it does in service."""
        out: dict[str, bytes] = {}
        promise_day = to_day(datetime.fromisoformat(self.eta).date())
        for sku in self.skus:
            for order in self.orders[sku]:
                rid = order.reservation_id(backorder)
                request = OrderRequest(
                    order.order_id, CHANNEL, [OrderLine("1", sku, order.quantity)], backorder
                )
                placed_us = int(order.placed_at.timestamp() * 1_000_000)
                if backorder:
                    line = LineResult("1", sku, order.quantity, [], order.quantity, self.eta, 0)
                    held = Held(sku, rid, LOCATION, order.quantity, placed_us, promise_day)
                else:
                    allocation = LineAllocation(LOCATION, order.quantity, rid)
                    line = LineResult("1", sku, order.quantity, [allocation], 0, None, 0)
                    held = Held(sku, rid, LOCATION, order.quantity)
                result = OrderResult(order.order_id, CHANNEL, "allocated", [line])
                stored = StoredOrder(fingerprint(request), result, [held])
                out[keys.SINGLE.order_key(order.order_id)] = encode_stored(stored)
        return out

    def wave(self, topic: str, tag: str) -> list[tuple[str, bytes, bytes]]:
        now = iso(datetime.now(UTC))
        out = []
        for sku in self.skus:
            event = {
                "type": "bin_movement", "event_id": f"rcv-{tag}-{sku}", "occurred_at": now,
                "sku": sku, "location": LOCATION, "quantity": self.claimed[sku],
                "from_bin": None, "from_status": None, "to_bin": "A-01",
                "to_status": "available", "reservation_id": None,
            }  # fmt: skip
            out.append((topic, sku.encode(), _encode(event)))
        return out


@dataclass
class Measured:
    plan_ms: float  # wave produced -> last plan written
    published_ms: float  # wave produced -> outbox empty
    setup_s: float
    replan_ms: float  # time in the fold step's build_replanned during the wave
    publish_ms: float  # time in the loop's outbox publishing (consumer thread) during it
    orders_read_ms: float  # of which reading notices' orders (store.order_results)
    orders_read: int  # how many reads of them (one per outbox entry with notices)
    batches: int  # writes that carried the wave (from the first message to the last plan)
    cpu_ms: float  # this process's CPU (consumer thread, write thread, librdkafka) in the wave
    redis_ms: float  # Redis server time (commandstats) during the wave
    longest_ms: float  # the longest single Redis command in it (slowlog; >= 1 ms)
    converted: int  # stock reservations made from claims (backorders); 0 in the baseline
    notices: int  # messages on the allocation-updates topic after the wave
    details: dict[str, Any]


def _timed_into(totals: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - started

    return wrapper


def _counted_into(
    totals: dict[str, float], name: str, fn: Callable[..., Any]
) -> Callable[..., Any]:
    timed_fn = _timed_into(totals, name, fn)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        totals[f"{name} calls"] += 1
        return timed_fn(*args, **kwargs)

    return wrapper


def _server_usec(client: redis.Redis) -> float:
    raw: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return sum(float(v["usec"]) for v in raw.values())


def _wait_outbox_empty(client: redis.Redis, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while client.hlen(keys.SINGLE.outbox_key(0)):
        if time.monotonic() > deadline:
            raise RuntimeError("the outbox was not published in time")
        time.sleep(0.005)
    return time.perf_counter()


def one_run(
    bench: Bench, redis_url: str, bootstrap: str, setup: Setup, run: int, variant: str
) -> Measured:
    backorder = variant == "backorders"
    name = f"replan-{run}-{variant}"
    settings: Settings = parse_config(
        bench_config(redis_url, bootstrap, prefix=name, group_id=name, ledger_dir=bench.tmp / name)
    )
    t = settings.topics
    create_topics(bootstrap, t.names(), partitions=PARTITIONS)
    client = bench.redis()
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for key, value in setup.order_records(backorder).items():
        pipe.set(key, value)
    pipe.execute()
    projector = build_consumer_loop(settings)
    landed = LandedWrites()
    projector.store.write = landed.wrap(projector.store.write)  # type: ignore[method-assign]
    totals: dict[str, float] = defaultdict(float)
    original = consumer_module.build_replanned
    consumer_module.build_replanned = _timed_into(totals, "replan", original)  # type: ignore[assignment]
    # On the consumer thread, after each batch's write: notices read their order from Redis.
    projector.publish_outbox = _timed_into(totals, "publish", projector.publish_outbox)  # type: ignore[method-assign]
    # The notices' orders, read from Redis by the publisher when it sends an outbox entry.
    order_results = projector.store.order_results
    projector.store.order_results = _counted_into(totals, "orders read", order_results)  # type: ignore[method-assign]
    stop = threading.Event()
    errors: list[BaseException] = []

    def run_loop() -> None:
        try:
            projector.run(stop)
        except BaseException as exc:
            errors.append(exc)

    def failed() -> BaseException | None:
        return errors[0] if errors else None

    thread = threading.Thread(target=run_loop, name="stream-projector", daemon=True)
    thread.start()
    # The wave's producer connects now, so its connection is not in the timed part.
    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
        "partitioner": "murmur2_random", "compression.type": "none",
    })  # fmt: skip
    try:
        started = time.perf_counter()
        landed.wait(produce_tracked(bootstrap, setup.inbound(t.inbound)), 300, failed)
        reservations = setup.reservations(t.reservations, backorder)
        landed.wait(produce_tracked(bootstrap, reservations), 300, failed)
        setup_s = time.perf_counter() - started
        _check_setup(client, setup, backorder)
        _wait_outbox_empty(client, 60)  # the set-up's availability events are out
        producer.list_topics(t.movements, timeout=10)  # metadata of the wave's topic, too
        time.sleep(0.5)  # the loop idles, as a live consumer between waves does

        client.config_resetstat()
        client.config_set("slowlog-log-slower-than", 1000)  # us
        client.slowlog_reset()
        totals.clear()
        cpu = time.process_time()
        wave = setup.wave(t.movements, name)
        wave_started = time.perf_counter()
        target = produce_tracked(bootstrap, wave, producer)
        if sum(target.values()) != len(wave):
            raise RuntimeError(f"delivery reports do not match the wave's {len(wave)}: {target}")
        planned_at = landed.wait(target, 300, failed)
        replan_s, publish_s = totals["replan"], totals["publish"]
        orders_read_s, orders_read = totals["orders read"], int(totals["orders read calls"])
        cpu_s = time.process_time() - cpu
        batches = sum(1 for at, _ in landed.history if wave_started <= at <= planned_at)
        redis_us = _server_usec(client)
        # The write is one script: Redis serves no other client (API reads) meanwhile.
        longest_us = max((int(e["duration"]) for e in client.slowlog_get(128)), default=0)
        published_at = _wait_outbox_empty(client, 120)

        stored: dict[bytes, bytes] = client.hgetall(
            keys.SINGLE.offsets_key(settings.kafka.group_id)
        )  # type: ignore[assignment]
        for field_name, offset in target.items():
            if int(stored.get(field_name.encode(), 0)) < offset:
                raise RuntimeError(f"Redis stored offsets are behind the wave at {field_name}")
        converted = _check_after(client, setup, backorder)
        notices = count_messages(bootstrap, t.allocation_updates)
        if backorder and notices != setup.n_orders:
            raise RuntimeError(f"{notices} order notices published, expected {setup.n_orders}")
        if errors:
            raise RuntimeError(f"the stream projector failed: {errors[0]!r}")
        s = projector.stats
        details = {
            "applied": s.applied, "duplicates": s.duplicates, "batches": s.batches,
            "dead_lettered": s.dead_lettered, "published": s.published,
            "offsets": {k.replace("\x1f", "/"): v for k, v in target.items()},
        }  # fmt: skip
        if s.dead_lettered:
            raise RuntimeError(f"{s.dead_lettered} events were dead-lettered")
    finally:
        stop.set()
        thread.join(60)
        consumer_module.build_replanned = original  # type: ignore[assignment]
        producer.flush(10)
        projector.producer.producer.flush(10)
        client.close()
        # Drop the wrappers (they hold the projector in a cycle) so its librdkafka clients
        # are destroyed now, while the broker still runs, not at exit.
        projector.__dict__.clear()
        gc.collect()
    return Measured(
        plan_ms=(planned_at - wave_started) * 1000,
        published_ms=(published_at - wave_started) * 1000,
        setup_s=setup_s,
        replan_ms=replan_s * 1000,
        publish_ms=publish_s * 1000,
        orders_read_ms=orders_read_s * 1000,
        orders_read=orders_read,
        batches=batches,
        cpu_ms=cpu_s * 1000,
        redis_ms=redis_us / 1000,
        longest_ms=longest_us / 1000,
        converted=converted,
        notices=notices,
        details=details,
    )


def _states(client: redis.Redis, skus: Sequence[str]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for sku in skus:
        pipe.hget(keys.SINGLE.sku_key(sku), keys.STATE_FIELD)
    return [load_state(sku, raw) for sku, raw in zip(skus, pipe.execute(), strict=True)]


def _check_setup(client: redis.Redis, setup: Setup, backorder: bool) -> None:
    """The set-up as made: every order's reservation open, none re-planned by the set-up."""
    now_us = time.time_ns() // 1000
    for state in _states(client, setup.skus):
        held = {r.reservation_id: r for r in state.reservations}
        wanted = {o.reservation_id(backorder) for o in setup.orders[state.sku]}
        if set(held) != wanted or any(r.open_quantity(now_us) == 0 for r in held.values()):
            raise RuntimeError(f"set-up of {state.sku} is not as produced: {sorted(held)}")
        if backorder and len(open_claims(state, now_us)) != PER_SKU:
            raise RuntimeError(f"{state.sku} holds no {PER_SKU} open backorders")
        if backorder and any(
            r.promise_day != to_day(datetime.fromisoformat(setup.eta).date()) for r in held.values()
        ):
            raise RuntimeError(f"the set-up of {state.sku} was re-planned (its promise moved)")


def _check_after(client: redis.Redis, setup: Setup, backorder: bool) -> int:
    """After the wave: the receipt on hand; with backorders, no claim open and every
    claimed unit reserved from stock under ``<order>:1:DC-01#<re-plan time>``. Returns the
    conversions."""
    now_us = time.time_ns() // 1000
    converted = 0
    for state in _states(client, setup.skus):
        on_hand = sum(b.quantity for b in state.bins if b.location == LOCATION)
        if on_hand != setup.claimed[state.sku]:
            raise RuntimeError(f"{state.sku}: {on_hand} on hand, expected the receipt")
        if not backorder:
            continue
        if open_claims(state, now_us):
            raise RuntimeError(f"{state.sku} still holds open backorders after the wave")
        stock = {  # the re-plan's time makes each id new (streams/backorders.py new_id)
            r.reservation_id.split("#", 1)[0]: r.open_quantity(now_us)
            for r in state.reservations
            if not r.is_backorder and r.open_quantity(now_us)
        }
        wanted = {o.reservation_id(False): o.quantity for o in setup.orders[state.sku]}
        if stock != wanted:
            raise RuntimeError(f"{state.sku}: stock reservations {stock}, expected {wanted}")
        converted += len(stock)
    return converted


PROFILED = (  # (file, function, label): parts of build_replanned, by cumulative time
    ("streams/backorders.py", "open_claims", "finding open claims"),
    ("streams/projector.py", "supply", "supply arrays (projector.supply)"),
    ("allocation/replan.py", "plan", "planning the claims (Planner.plan)"),
    ("streams/backorders.py", "_events", "the re-plan's events and reservations (_events)"),
    ("streams/fold.py", "fold_own", "folding the re-plan's events (fold_own)"),
    ("streams/changeset.py", "build_changeset", "render + change set"),
)


def offline(
    setup: Setup, settings: Settings, repeats: int = 5
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """The fold step's ``build_replanned`` alone, on the states the consumer holds when the
    wave's receipts are folded, in one thread with no services: ms per wave for each
    variant, and where the time goes with backorders (cProfile, share of the total)."""
    projector = projector_for(settings)
    known = frozenset(c.name for c in settings.channels)
    window = int(settings.consumer.dedupe_window_days * US_PER_DAY)
    now = time.time_ns() // 1000

    def decoded(messages: list[tuple[str, bytes, bytes]]) -> list[Any]:
        return [decode(value, known) for _, _, value in messages]

    times: dict[str, list[float]] = {}
    shares: dict[str, float] = {}
    for variant in VARIANTS:
        backorder = variant == "backorders"
        made = decoded(setup.inbound("i") + setup.reservations("r", backorder))
        before = fold({}, made, seen=frozenset(), now_us=now, window_us=window).states
        wave = decoded(setup.wave("m", "offline"))
        after = fold(before, wave, seen=frozenset(), now_us=now, window_us=window).states
        touched = [after[sku] for sku in setup.skus]
        by_sku = events_by_sku(wave)

        step = partial(build_replanned, touched, {}, projector, now, window, by_sku, {})

        gc.collect()
        gc.disable()  # as in the consumer's loop
        try:
            times[variant] = []
            for _ in range(repeats):
                started = time.perf_counter()
                step()
                times[variant].append((time.perf_counter() - started) * 1000)
            if backorder:
                profile = cProfile.Profile()
                profile.runcall(step)
        finally:
            gc.enable()
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    cumulative = {
        (file, function): ct
        for (path, _, function), (_, _, _, ct, _) in stats.items()
        for file, wanted, _ in PROFILED
        if function == wanted and path.endswith(file)
    }
    total = next(
        ct
        for (path, _, function), (_, _, _, ct, _) in stats.items()
        if function == "build_replanned" and path.endswith("streams/backorders.py")
    )
    for file, function, label in PROFILED:
        shares[label] = 100 * cumulative.get((file, function), 0.0) / total
    shares["the rest (building, encoding and queueing the events, line records)"] = max(
        0.0, 100 - sum(shares.values())
    )
    return times, shares


def settings_for_offline(redis_url: str, bench: Bench) -> Settings:
    return parse_config(bench_config(redis_url, ledger_dir=bench.tmp / "offline"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("re-planning benchmark: a receipt wave converting backorders", argv)
    stop_on_sigterm()
    n_skus = SIZES[args.size]["skus"]
    setup = Setup.make(n_skus)
    report = Report("replan", args.size, "Re-planning: a receipt wave converting backorders")
    report.parameters = {
        "skus": n_skus, "backorders": setup.n_orders, "backorders_per_sku": PER_SKU,
        "channel": CHANNEL, "location": LOCATION, "partitions": PARTITIONS, "runs": args.runs,
        "wave_messages": n_skus,
    }  # fmt: skip
    results: dict[str, list[Measured]] = {v: [] for v in VARIANTS}
    with Bench("replan") as bench:
        redis_url = bench.start_redis()
        bootstrap = bench.start_broker()
        for run in range(args.runs):
            order = VARIANTS if run % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                with timed(f"run {run + 1}/{args.runs} {variant}"):
                    m = one_run(bench, redis_url, bootstrap, setup, run, variant)
                    results[variant].append(m)
                    say(
                        f"    last plan updated {m.plan_ms:.0f} ms after the wave's first "
                        f"message; outbox empty at {m.published_ms:.0f} ms; "
                        f"set-up folded in {m.setup_s:.1f} s; converted {m.converted}"
                    )

        with timed("build_replanned alone, no services"):
            alone, shares = offline(setup, settings_for_offline(redis_url, bench))

    bo, base = results["backorders"], results["baseline"]
    baseline_name = "the same wave, no backorders (plain reservations)"
    report.add(Figure(
        f"receipt wave -> last plan updated ({setup.n_orders:,} backorders, {n_skus:,} skus)",
        "ms", [m.plan_ms for m in bo], baseline_name, [m.plan_ms for m in base],
        [("ratio", "<=", 2.0)], target_text="x<= 2.00",
    ))  # fmt: skip
    rows: list[tuple[str, str, Callable[[Measured], float]]] = [
        ("  of it, in the fold step's build_replanned (re-plan, render, change set)", "ms",
         lambda m: m.replan_ms),
        ("  of it, outbox publishing on the consumer thread (blocks the next batch)", "ms",
         lambda m: m.publish_ms),
        ("    of which reading the notices' orders (store.order_results, per outbox entry)", "ms",
         lambda m: m.orders_read_ms),
        ("  this process's CPU during it (all its threads)", "ms", lambda m: m.cpu_ms),
        ("  Redis server time during it (all commands)", "ms", lambda m: m.redis_ms),
        ("  longest single Redis command in it (the write script; Redis serves no one else)",
         "ms", lambda m: m.longest_ms),
        ("receipt wave -> outbox empty (every event and notice acknowledged)", "ms",
         lambda m: m.published_ms),
        ("  per converted backorder (last plan updated)", "us",
         lambda m: m.plan_ms * 1000 / setup.n_orders),
    ]  # fmt: skip
    for label, unit, get in rows:
        baseline_runs = [get(m) for m in base] if not label.startswith("  per") else []
        report.add(Figure(label, unit, [get(m) for m in bo], baseline_name if baseline_runs else "",
                          baseline_runs, informative=True))  # fmt: skip
    report.add(Figure(
        "build_replanned alone on the wave's states (one thread, no services)", "ms",
        alone["backorders"], "the same, no backorders (render + change set only)",
        alone["baseline"], informative=True,
    ))  # fmt: skip
    for label, share in shares.items():
        report.add(Figure(f"  profile: {label}", "% of it", [share], informative=True))
    report.add(Figure("set-up folded (inbound, then reservations)", "s",
                      [m.setup_s for m in bo], baseline_name, [m.setup_s for m in base],
                      informative=True))  # fmt: skip
    report.details["runs"] = {v: [m.__dict__ for m in ms] for v, ms in results.items()}
    report.details["offline_ms"] = alone
    report.details["offline_profile_percent"] = shares
    report.notes.append(
        f"writes that carried the wave: backorders {[m.batches for m in bo]}, baseline "
        f"{[m.batches for m in base]}; reads of notices' orders before the last write: "
        f"{[m.orders_read for m in bo]}"
    )
    report.notes.append(
        "timed from just before the wave's first message is produced (linger.ms 5, producer "
        "connected beforehand) to the return of the Redis write that stored the wave's last "
        "offsets (states, projection, re-plan and outbox are in that same atomic write); "
        "checked afterwards from Redis: stored offsets, every sku's claims converted"
    )
    report.notes.append(
        f"conversions per run: {[m.converted for m in bo]}; order notices on the "
        f"allocation-updates topic: {[m.notices for m in bo]} (baseline: "
        f"{[m.notices for m in base]})"
    )
    report.series["wave -> last plan updated, per run (ms)"] = {
        v: {f"run {i + 1}": m.plan_ms for i, m in enumerate(ms)} for v, ms in results.items()
    }
    report.series_unit["wave -> last plan updated, per run (ms)"] = "ms"
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
