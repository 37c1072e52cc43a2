"""Issue 4, fault test 7: a hypothesis state machine against a plain model of the contract.

In-process for speed: the real redis-server (session fixture), the real write script, the
real ConsumerLoop (with a ledger) driven through ``process()`` with small fake Kafka
messages, and the real Allocator (``asyncio.run``) with a fake ``send`` that records what
would be published. Steps interleave events (receipts, moves, shipments naming reservations,
counts, inbound), allocations (single orders, batches of two channels; no backorders, which
are planned again on every supply change: see the allocate rule), repeats of an allocation, releases, duplicates (an applied message again, at a
new offset and possibly another partition), the API's own events coming back through the
consumer, poison messages, expiry sweeps and consumer restarts (a new ConsumerLoop over
the same Redis that seeks to the offsets stored there).

The model is ``tests.reference.ReferenceModel`` plus plain accounting of allocations: what
each line must take, where, and what it may promise, written from contract section 4; the
allocator's reservations then enter the model as the ``reservation_created`` events it
publishes. After every step: every Redis document equals the model's, and none is negative.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aredis
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from atp_service.allocator import Allocator
from atp_service.config import Settings, parse_config
from atp_service.model import projector_for
from atp_service.orders import OrderLine, OrderRequest, OrderResult
from atp_service.store import keys
from atp_service.store.async_store import AsyncRedisStore
from atp_service.store.redis_store import RedisStore, initialize
from streams.consumer import ConsumerLoop, ConsumerOptions, offset_field
from streams.kafka import Outgoing
from streams.ledger import Ledger
from streams.state import US_PER_DAY
from tests.conftest import config_text
from tests.fakes import FakeConsumer, FakeMessage, FakeProducer
from tests.faults.harness import documents, iso, now_us, sku_keys
from tests.reference import ReferenceModel

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SKUS = ("H-1", "H-2", "H-3")
LOCATIONS = ("DC-EAST", "DC-WEST", "STORE-9")
BINS = ("B1", "B2")
STATUSES = ("available", "available", "damaged")
EVENT_IDS = ("R1", "R2", "R3")
INBOUND_IDS = ("PO1", "PO2", "PO3")
WINDOW_US = 7 * US_PER_DAY


def _order(
    order_id: str, channel: str, lines: list[tuple[str, int]], backorder: bool
) -> OrderRequest:
    return OrderRequest(
        order_id=order_id,
        channel=channel,
        lines=[
            OrderLine(line_id=str(i + 1), sku=sku, quantity=q) for i, (sku, q) in enumerate(lines)
        ],
        backorder=backorder,
    )


class Machine(RuleBasedStateMachine):
    """One example: a flushed Redis, a fresh ledger directory, an empty model."""

    redis_url: str = ""
    settings_: Settings

    def __init__(self) -> None:
        super().__init__()
        s = self.settings_
        self.client = redis.Redis.from_url(self.redis_url)
        self.client.flushall()
        # As a consumer starting on an empty Redis with an empty ledger does (allocations may
        # come before the first event here).
        initialize(self.client, keys.SINGLE, "test")
        self.ledger_dir = tempfile.mkdtemp(prefix="atp-stateful-ledger-")
        self.projector = projector_for(s)
        t = s.topics
        self.topics = (t.movements, t.reservations, t.inbound)
        self.options = ConsumerOptions(
            topics=self.topics,
            dead_letter_topic=t.dead_letter,
            availability_topic=t.availability,
            reservations_topic="oms.reservations",
            allocation_updates_topic="atp.allocation-updates",
            stock_states_topic="atp.stock-states",
            known_channels=frozenset(c.name for c in s.channels),
            batch_size=5000,
            batch_timeout_s=0.02,
            sweep_interval_s=0.1,
            window_us=WINDOW_US,
            max_message_bytes=1_000_000,
        )
        self.producer = FakeProducer()
        self.stream = self._new_stream()
        self.model = ReferenceModel(s)
        self.next_offset: dict[tuple[str, int], int] = {}
        self.sent: list[tuple[str, bytes, bytes]] = []  # every message given to the consumer
        self.api_events: list[Outgoing] = []  # what the API published
        self.api_consumed = 0
        self.orders: dict[str, tuple[OrderRequest, OrderResult]] = {}
        self.order_count = 0
        self.reservation_ids: list[str] = list(EVENT_IDS)
        self.now = datetime.now(UTC)
        self.base_us = now_us() - US_PER_DAY
        self.today = self.now.date()

    def teardown(self) -> None:
        self.client.close()
        shutil.rmtree(self.ledger_dir, ignore_errors=True)

    def _new_stream(self) -> ConsumerLoop:
        store = RedisStore(
            redis.Redis.from_url(self.redis_url), self.settings_.kafka.group_id, WINDOW_US // 1000
        )
        return ConsumerLoop(
            FakeConsumer(),
            self.producer,
            store,
            self.projector,
            self.options,
            ledger=Ledger(self.ledger_dir),
        )  # type: ignore[arg-type]

    # -- feeding the consumer --------------------------------------------------------------

    def _deliver(self, items: list[tuple[str, bytes, bytes, int]]) -> None:
        """(topic, key, value, partition) as one batch of the consumer."""
        messages = []
        for topic, key, value, partition in items:
            offset = self.next_offset.get((topic, partition), 0)
            self.next_offset[(topic, partition)] = offset + 1
            messages.append(FakeMessage(topic, partition, offset, value, key))
            self.sent.append((topic, key, value))
        self.stream.process(messages)  # type: ignore[arg-type]

    def _topic(self, kind: str) -> str:
        if kind in ("bin_movement", "bin_count"):
            return self.topics[0]
        if kind.startswith("reservation"):
            return self.topics[1]
        return self.topics[2]

    def _home(self, sku: str) -> int:
        return SKUS.index(sku) % 3 if sku in SKUS else 0

    def _draw_event(self, data: st.DataObject) -> dict[str, Any]:
        kind = data.draw(
            st.sampled_from(
                ["receipt", "receipt", "ship", "move", "count", "reserve", "release", "inbound"]
            )
        )
        sku = data.draw(st.sampled_from(SKUS))
        at = iso(self.base_us + data.draw(st.integers(0, 600)) * 1_000_000)
        self.order_count += 1
        base: dict[str, Any] = {
            "event_id": f"e-{self.order_count}-{data.draw(st.integers(0, 10**6))}",
            "occurred_at": at,
            "sku": sku,
        }
        location = data.draw(st.sampled_from(LOCATIONS))
        bin_, status = data.draw(st.sampled_from(BINS)), data.draw(st.sampled_from(STATUSES))
        if kind in ("receipt", "ship", "move"):
            quantity = data.draw(st.integers(1, 20))
            src = None if kind == "receipt" else (bin_, status)
            dst = (
                None
                if kind == "ship"
                else (data.draw(st.sampled_from(BINS)), data.draw(st.sampled_from(STATUSES)))
            )
            rid = (
                data.draw(st.sampled_from(self.reservation_ids))
                if kind == "ship" and data.draw(st.booleans())
                else None
            )
            return {**base, "type": "bin_movement", "location": location, "quantity": quantity,
                    "from_bin": src and src[0], "from_status": src and src[1],
                    "to_bin": dst and dst[0], "to_status": dst and dst[1], "reservation_id": rid}  # fmt: skip
        if kind == "count":
            return {**base, "type": "bin_count", "location": location, "bin": bin_, "status": status,
                    "quantity": data.draw(st.integers(0, 25))}  # fmt: skip
        if kind == "reserve":
            channel = data.draw(st.sampled_from(["web", "marketplace"]))
            expiry = data.draw(st.sampled_from([None, None, "past", "future"]))
            # Already expired (an hour ago: within the dedupe window, see README "Choices"), or
            # far ahead; never near now, so the model's clock and the consumer's agree.
            ahead = 30 * US_PER_DAY if expiry == "future" else -3_600_000_000
            expires_at = None if expiry is None else iso(now_us() + ahead)
            return {**base, "type": "reservation_created", "reservation_id": data.draw(st.sampled_from(self.reservation_ids)),
                    "channel": channel, "location": location, "quantity": data.draw(st.integers(0, 10)),
                    "expires_at": expires_at}  # fmt: skip
        if kind == "release":
            return {
                **base,
                "type": "reservation_released",
                "reservation_id": data.draw(st.sampled_from(self.reservation_ids)),
            }
        eta = self.today + timedelta(days=data.draw(st.integers(-3, 20)))
        return {**base, "type": "inbound", "inbound_id": data.draw(st.sampled_from(INBOUND_IDS)), "location": location,
                "quantity": data.draw(st.integers(0, 30)), "eta": eta.isoformat()}  # fmt: skip

    @rule(data=st.data(), size=st.integers(1, 4))
    def events(self, data: st.DataObject, size: int) -> None:
        batch = [self._draw_event(data) for _ in range(size)]
        for event in batch:
            assert self.model.apply(event) == "applied"
        self._deliver(
            [
                (
                    self._topic(e["type"]),
                    e["sku"].encode(),
                    msgspec.json.encode(e),
                    self._home(e["sku"]),
                )
                for e in batch
            ]
        )

    @rule(data=st.data(), size=st.integers(1, 4))
    def more_events(self, data: st.DataObject, size: int) -> None:
        """(events are the common case: a second rule doubles their share of the steps)"""
        self.events(data, size)

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        topic, key, value = data.draw(st.sampled_from(self.sent))
        assert self.model.apply(value) in ("duplicate", "rejected")
        self._deliver([(topic, key, value, data.draw(st.integers(0, 2)))])

    @rule(data=st.data())
    def poison(self, data: st.DataObject) -> None:
        value = data.draw(st.sampled_from([b"{oops", b'{"type": "teleport", "event_id": "x", "sku": "H-1"}',
                                           b'{"type": "bin_count", "event_id": "p", "occurred_at": "2026-01-01T00:00:00Z", "sku": "H-1", "location": "DC-EAST", "bin": "B1", "status": "available", "quantity": -1}']))  # fmt: skip
        assert self.model.apply(value) == "rejected"
        before = len(self.producer.sent)
        self._deliver([(self.topics[0], b"H-1", value, 0)])
        dead = [m for m in self.producer.sent[before:] if m.topic == self.options.dead_letter_topic]
        assert len(dead) == 1 and dead[0].value == value
        headers = dict(dead[0].headers)
        assert headers["atp-error"] and headers["atp-source-topic"] == self.topics[0].encode()

    # -- the allocator --------------------------------------------------------------------

    def _run(self, call: Callable[[Allocator], Any]) -> tuple[Any, list[Outgoing]]:
        published: list[Outgoing] = []

        def send(messages: Sequence[Outgoing], timeout: float) -> None:
            published.extend(messages)

        async def main() -> Any:
            client = aredis.Redis.from_url(self.redis_url)
            try:
                store = AsyncRedisStore(client, self.settings_.kafka.group_id, WINDOW_US // 1000)
                allocator = Allocator(store, self.projector, send, self.topics[1])
                return await call(allocator)
            finally:
                await client.aclose()

        return asyncio.run(main()), published

    def _free(self, sku: str) -> dict[str, int]:
        """on_hand - reserved per location of one sku, from the model's plain state."""
        now = now_us()
        m = self.model
        free = dict.fromkeys(LOCATIONS, 0)
        for (s, location, _bin, status), quantity in m.bins.items():
            if s == sku and status in m.sellable:
                free[location] += quantity
        for (s, _rid), reservation in m.reservations.items():
            if s == sku and reservation.created is not None:
                free[reservation.created[1]] -= reservation.open_quantity(moment_of(now))
        return free

    def _expected(self, orders: list[OrderRequest]) -> dict[tuple[str, str], dict[str, Any]]:
        """Contract section 4, plainly: what every line takes, where, and what it promises."""
        priority = {c.name: c.priority for c in self.settings_.channels}
        lines = sorted(
            ((o, line) for o in orders for line in o.lines), key=lambda ol: priority[ol[0].channel]
        )  # stable: higher priority first, then in the order given
        free: dict[str, dict[str, int]] = {}
        out = {}
        for order, line in lines:
            channel = next(c for c in self.model.channels if c.name == order.channel)
            stock = free.setdefault(line.sku, self._free(line.sku))
            safety = self.model.safety_stock(channel.name, line.sku)
            ats = max(0, sum(stock[loc] for loc in channel.locations) - safety)
            take = min(line.quantity, ats)
            placed: list[tuple[str, int]] = []
            whole = next((loc for loc in channel.locations if max(0, stock[loc]) >= take), None)
            if take and whole is not None:
                placed = [(whole, take)]
            elif take:
                left = take
                for loc in channel.locations:
                    part = min(left, max(0, stock[loc]))
                    if part:
                        placed.append((loc, part))
                        left -= part
                assert left == 0
            for loc, part in placed:
                stock[loc] -= part
            backordered, promise = 0, None
            rest = line.quantity - take
            if order.backorder and rest:
                net = sum(stock[loc] for loc in channel.locations)
                horizon = self.today + timedelta(days=channel.horizon_days)
                due: dict[date, list[tuple[str, int]]] = {}
                for (s, _iid), inbound in self.model.inbound.items():
                    if (
                        s == line.sku
                        and inbound.quantity > 0
                        and inbound.location in channel.locations
                        and inbound.eta <= horizon
                    ):
                        due.setdefault(max(inbound.eta, self.today), []).append(
                            (inbound.location, inbound.quantity)
                        )
                running, timeline = 0, []
                for day in sorted(due):
                    running += sum(q for _, q in due[day])
                    timeline.append((day, max(0, net + running - safety)))
                backordered = min(rest, timeline[-1][1]) if timeline else 0
                if backordered:
                    day = next(d for d, q in timeline if q >= backordered)
                    where = next(
                        loc for loc in channel.locations if any(l_ == loc for l_, _ in due[day])
                    )
                    promise = (day.isoformat(), where)
                    stock[where] -= backordered
            out[(order.order_id, line.line_id)] = {
                "allocations": placed, "backordered": backordered, "unfilled": rest - backordered,
                "promise": promise,
            }  # fmt: skip
        return out

    def _check_and_record(
        self, orders: list[OrderRequest], results: list[OrderResult], published: list[Outgoing]
    ) -> None:
        expected = self._expected(orders)
        created = [json.loads(m.value) for m in published]
        assert all(m.topic == self.topics[1] for m in published)
        for order, result in zip(orders, results, strict=True):
            assert result.order_id == order.order_id and result.status == "allocated"
            for line in result.lines:
                want = expected[(order.order_id, line.line_id)]
                got = [(a.location, a.quantity) for a in line.allocations]
                assert got == want["allocations"], (order, line, want)
                assert (line.backordered, line.unfilled) == (
                    want["backordered"],
                    want["unfilled"],
                ), (order, line, want)
                if want["promise"] is not None:
                    assert line.promise_date == want["promise"][0], (order, line, want)
                held = [
                    e
                    for e in created
                    if e["reservation_id"].startswith(f"{order.order_id}:{line.line_id}:")
                ]
                assert sum(e["quantity"] for e in held) == sum(q for _, q in got) + line.backordered
                if want["promise"] is not None:
                    assert any(
                        e["location"] == want["promise"][1] and ":backorder" in e["reservation_id"]
                        for e in held
                    )
            self.orders[order.order_id] = (order, result)
        for event in created:
            assert event["type"] == "reservation_created"
            assert event["event_id"] == f"atp-alloc:{event['reservation_id']}"
            assert self.model.apply(event) == "applied"
            self.reservation_ids.append(event["reservation_id"])
        self.api_events += published

    @rule(
        channel=st.sampled_from(["web", "marketplace"]),
        lines=st.lists(
            st.tuples(st.sampled_from(SKUS), st.integers(1, 15)),
            min_size=1,
            max_size=2,
            unique_by=lambda t: t[0],
        ),
        # Orders without backorder only: a backorder is planned again by every supply change
        # (contract section 9), which this model does not do. The re-planning is held to a
        # from-scratch plan by tests/property/test_backorder_properties.py and run end to end
        # by tests/integration/test_backorders.py.
        backorder=st.just(False),
    )
    def allocate(self, channel: str, lines: list[tuple[str, int]], backorder: bool) -> None:
        self.order_count += 1
        order = _order(f"O{self.order_count}", channel, lines, backorder)
        answers, published = self._run(lambda a: a.allocate([order]))
        ((result, created),) = answers
        assert created
        self._check_and_record([order], [result], published)

    @rule(sku=st.sampled_from(SKUS), web=st.integers(1, 15), market=st.integers(1, 15))
    def allocate_batch(self, sku: str, web: int, market: int) -> None:
        """Two channels competing for one sku in one batch: web (priority 1) goes first."""
        self.order_count += 1
        orders = [_order(f"M{self.order_count}", "marketplace", [(sku, market)], False),
                  _order(f"W{self.order_count}", "web", [(sku, web)], False)]  # fmt: skip
        answers, published = self._run(lambda a: a.allocate(orders))
        assert [created for _, created in answers] == [True, True]
        self._check_and_record(orders, [result for result, _ in answers], published)

    @precondition(lambda self: bool(self.orders))
    @rule(data=st.data())
    def repeat_allocation(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.orders)))
        order, result = self.orders[order_id]
        answers, published = self._run(lambda a: a.allocate([order]))
        ((again, created),) = answers
        assert not created and not published
        assert again == result

    @precondition(lambda self: bool(self.orders))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.orders)))
        released, published = self._run(lambda a: a.release(order_id))
        assert released is not None and released.status == "released"
        for message in published:
            event = json.loads(message.value)
            assert event["type"] == "reservation_released"
            self.model.apply(event)  # "duplicate" on a repeated release
        self.orders[order_id] = (
            self.orders[order_id][0],
            msgspec.structs.replace(self.orders[order_id][1], status="released"),
        )
        self.api_events += published

    @precondition(lambda self: self.api_consumed < len(self.api_events))
    @rule()
    def api_events_come_back(self) -> None:
        """The consumer reads the API's own events from the reservations topic: no change."""
        fresh = self.api_events[self.api_consumed :]
        self.api_consumed = len(self.api_events)
        for message in fresh:
            assert self.model.apply(message.value) == "duplicate"
        self._deliver(
            [(m.topic, m.key or b"", m.value, self._home((m.key or b"").decode())) for m in fresh]
        )

    # -- the consumer's life ----------------------------------------------------------------

    @rule()
    def restart(self) -> None:
        """A new consumer instance: on assignment it seeks to the offsets stored in Redis."""
        self.stream = self._new_stream()
        consumer = FakeConsumer()
        partitions = [TopicPartition(t, p) for t in self.topics for p in range(3)]
        self.stream.on_assign(consumer, partitions)  # type: ignore[arg-type]
        for tp in consumer.assigned:
            want = self.next_offset.get((tp.topic, tp.partition))
            assert tp.offset == (OFFSET_BEGINNING if want is None else want), (tp, want)

    @rule()
    def sweep(self) -> None:
        self.stream.sweep()

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def projection_equals_model(self) -> None:
        skus = sorted(set(self.model.skus) | sku_keys(self.client))
        want = self.model.expected(now_us(), skus=skus)
        have = documents(self.client, list(want))
        for key, doc in want.items():
            got = have[key]
            if got is None:
                assert key[1] not in self.model.skus, f"{key}: no document; model {doc}"
                continue
            assert got["available_to_sell"] >= 0
            assert {k: got[k] for k in doc} == doc, f"{key}: redis {got} != model {doc}"
        stored = self.stream.store.offsets()
        assert stored == {offset_field(t, p): o for (t, p), o in self.next_offset.items()}


def moment_of(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def test_state_machine_against_the_model(redis_url: str) -> None:
    text = config_text(redis_url=redis_url, prefix="sm", group_id="g-sm")
    Machine.redis_url = redis_url
    Machine.settings_ = parse_config(text)
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=100,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
