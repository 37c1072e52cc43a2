"""Allocation as check-and-reserve, atomic in Redis with the projection.

1. Orders already stored are answered from the store (same body) or refused (other body).
2. Read the skus' states and versions; allocate every new line.
3. One write script: new states + projection + the orders' records (``nx``) + dedupe marks of
   the reservation events, refused as a whole if any sku changed since the read (then 2
   again) or an order appeared meanwhile (then 1 again).
4. Publish every reservation as ``reservation_created`` (idempotent producer, acks=all) and
   answer only after the broker acknowledged. If it does not, the reservations are released
   again and the order record removed: no acknowledged allocation exists only in Redis.
5. The write notes each order as unpublished, and the note goes once its events are
   acknowledged. An order whose note outlives its request (the process died between the
   write and the broker's answer, or the write's reply was lost and the request failed) is
   published by any API process's sweep (``publish_unpublished``): its reservations stay
   held, so their events must reach the ledger, and the consumer applies them once.

A batch (``POST /v1/allocations/batch``) looks its orders up first and allocates them in one
vectorized call. Single orders (``POST /v1/allocations``) that arrive while earlier ones are
being written are written together (group commit): one read, the orders allocated one after
another in arrival order (each exactly as if alone, see ``orders.plan_in_turn``), one write
script and one wait for the broker, so the per-write costs (Redis round trips, the
projection, the broker's acknowledgement) are paid once per group rather than per order.
They skip step 1 at first: the ``nx`` put of their records refuses the write if one exists,
and only then are the group's orders looked up. Every order still answers only after its own
events were acknowledged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from prometheus_client import Counter
from redis.exceptions import RedisError

from allocation.kits import KitComponent, KitDefinition, check_kit
from atp_service.orders import (
    Held,
    OrderRequest,
    OrderResult,
    Planned,
    StoredOrder,
    backordered_lines,
    decode_stored,
    encode_stored,
    fingerprint,
    plan,
    plan_in_turn,
    release,
)
from atp_service.overrides import OverrideChanged, encode, message_key
from atp_service.store.async_store import AsyncRedisStore
from atp_service.store.kit_records import KitRecord, SeqMoved, definitions
from atp_service.store.write_plan import PutExists
from streams.backorders import build_replanned, created_event_id, line_field, released_event_id
from streams.changeset import ChangeSet, build_changeset, count_capacity
from streams.events import ReservationCreated, ReservationReleased
from streams.kafka import Outgoing, ProduceFailed
from streams.logs import HEADER as CORRELATION_HEADER
from streams.logs import correlation_id
from streams.projector import Projector
from streams.state import NO_PROMISE, US_PER_DAY, SkuState, from_day, from_us
from streams.store import ProjectionMissing, Snapshot

MAX_ATTEMPTS: Final = 50
ALLOCATED_UNITS: Final = Counter(
    "atp_allocation_units_total", "Units requested by allocations, by outcome", ["outcome"]
)
_UNITS_ALLOCATED: Final = ALLOCATED_UNITS.labels("allocated")
_UNITS_BACKORDERED: Final = ALLOCATED_UNITS.labels("backordered")
_UNITS_UNFILLED: Final = ALLOCATED_UNITS.labels("unfilled")
RELEASED_ORDERS: Final = Counter("atp_released_orders_total", "Orders released over the API")
PUBLISH_TIMEOUT_S: Final = 5.0
# At shutdown: a group's write and publish take at most about PUBLISH_TIMEOUT_S, plus an undo.
DRAIN_S: Final = 8.0
# An unpublished order older than this outlived the request that wrote it: a request ends,
# published or undone, within about DRAIN_S.
ORPHAN_AFTER_MS: Final = 15_000
SWEEP_UNPUBLISHED_S: Final = 5.0

log = logging.getLogger(__name__)
GROUP_MAX_ORDERS: Final = 64  # single orders written together, at most
GROUP_MAX_LINES: Final = 2000  # ... and their lines (a larger first order goes alone)


class OrderConflict(Exception):
    """The order_id exists with a different body (409)."""

    def __init__(self, order_id: str) -> None:
        super().__init__(order_id)
        self.order_id = order_id


class PublishFailed(Exception):
    """The broker did not acknowledge; the reservations were undone (503)."""


class Busy(Exception):
    """Too many concurrent writers on the same skus; retry (503)."""


def _own(stored: StoredOrder, tried: Mapping[str, StoredOrder]) -> StoredOrder | None:
    """The record this request's last write made, when ``stored`` is it though the write
    was answered as refused: its reply was lost, and redis-py sent the script again, which
    found the record there. Nothing of it was published yet."""
    mine = tried.get(stored.result.order_id)
    return mine if mine is not None and mine.attempt and stored.attempt == mine.attempt else None


def _count(result: OrderResult) -> None:
    for line in result.lines:
        _UNITS_ALLOCATED.inc(sum(a.quantity for a in line.allocations))
        _UNITS_BACKORDERED.inc(line.backordered)
        _UNITS_UNFILLED.inc(line.unfilled)


def _now_us() -> int:
    return time.time_ns() // 1000


def _headers(cid: str | None) -> list[tuple[str, bytes]]:
    return [(CORRELATION_HEADER, cid.encode())] if cid else []


def _read_for(orders: Sequence[OrderRequest], kits: Mapping[str, KitDefinition]) -> list[str]:
    skus: dict[str, None] = {}
    for order in orders:
        for line in order.lines:
            kit = kits.get(line.sku)
            if kit is None:
                skus[line.sku] = None
            else:
                skus.update((c.sku, None) for c in kit.components)
    return list(skus)


def _with_backorder(event: ReservationCreated, held: Held) -> ReservationCreated:
    """A backorder's place in the queue and its promise, carried by its event so that the
    ledger replays them (contract section 9)."""
    if not held.placed_at:
        return event
    promise = None if held.promise_day == NO_PROMISE else from_day(held.promise_day)
    return msgspec.structs.replace(event, placed_at=from_us(held.placed_at), promise_date=promise)


@dataclass
class _Waiting:
    """A single order waiting for its group's write."""

    order: OrderRequest
    fingerprint: str
    correlation_id: str | None
    future: asyncio.Future[tuple[OrderResult, bool]]


def _settle(waiting: _Waiting, result: tuple[OrderResult, bool] | BaseException) -> None:
    if waiting.future.done():  # its request went away; the order was handled all the same
        return
    if isinstance(result, asyncio.CancelledError):
        waiting.future.cancel()
    elif isinstance(result, BaseException):
        waiting.future.set_exception(result)
    else:
        waiting.future.set_result(result)


class Allocator:
    def __init__(
        self,
        store: AsyncRedisStore,
        projector: Projector,
        send: Callable[[Sequence[Outgoing], float], Awaitable[None] | None],
        reservations_topic: str,
        clock: Callable[[], int] = _now_us,
        overrides_topic: str = "atp.overrides",
    ) -> None:
        self.store = store
        self.projector = projector
        self.send = send
        self.topic = reservations_topic
        self.overrides_topic = overrides_topic
        self.clock = clock
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def drain(self, timeout_s: float = DRAIN_S) -> bool:
        """Wait for the groups being written or published to end, each published or undone.

        For shutdown, before the publisher closes: a publish cancelled by the event loop's
        own shutdown would leave its reservations in Redis, neither announced nor undone.
        False if some were still running after ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            # The writer may start publishes while we wait: look again each time.
            running = [
                task
                for task in (self._writer, *self._tasks)
                if task is not None and not task.done() and task.get_loop() is loop
            ]
            left = deadline - loop.time()
            if not running:
                return True
            if left <= 0:
                log.warning("%d allocation group(s) still in flight at shutdown", len(running))
                return False
            await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)

    async def _send(self, messages: list[Outgoing]) -> None:
        # An async sender awaits its own acknowledgements; a blocking one runs in a thread.
        if asyncio.iscoroutinefunction(self.send):
            await self.send(messages, PUBLISH_TIMEOUT_S)
        else:
            await asyncio.to_thread(self.send, messages, PUBLISH_TIMEOUT_S)

    async def stored(self, order_ids: Sequence[str]) -> list[StoredOrder | None]:
        """The orders as planned now (backorders re-planned since included), or None."""
        return await self.store.orders(order_ids)

    async def allocate(self, orders: Sequence[OrderRequest]) -> list[tuple[OrderResult, bool]]:
        """Allocate; each result says whether it was created now (False: a stored repeat)."""
        if len(orders) == 1:
            return [await self._allocate_single(orders[0])]
        prints = [fingerprint(o) for o in orders]
        tried: dict[str, StoredOrder] = {}  # the last write's records
        for _ in range(MAX_ATTEMPTS):
            known = await self.stored([o.order_id for o in orders])
            answers: list[tuple[OrderResult, bool] | None] = []
            fresh: list[int] = []
            for i, (order, stored) in enumerate(zip(orders, known, strict=True)):
                if stored is None:
                    answers.append(None)
                    fresh.append(i)
                elif stored.fingerprint != prints[i]:
                    raise OrderConflict(order.order_id)
                elif (record := _own(stored, tried)) is not None:
                    await self._publish_or_undo([record], self.clock(), [correlation_id.get()])
                    answers.append((record.result, True))
                    _count(record.result)
                else:
                    answers.append((stored.result, False))
            if not fresh:
                return [a for a in answers if a is not None]
            new_orders = [orders[i] for i in fresh]
            kits, skus = await self._skus_of(new_orders)
            snapshot = await self.store.read(skus)
            now = self.clock()
            room = await self._room(now)
            planned = plan(new_orders, snapshot.states, self.projector, now, kits=kits, room=room)
            changes, records = self._write_of(
                planned, snapshot.versions, [prints[i] for i in fresh], now
            )
            tried = {r.result.order_id: r for r in records}
            try:
                if await self.store.write(changes, now // 1000):
                    continue  # a sku moved since the read: allocate again on fresh state
            except PutExists:
                continue  # the same order_id was allocated concurrently: answer as a repeat
            cid = correlation_id.get()
            await self._publish_or_undo(records, now, [cid] * len(records))
            for i, record in zip(fresh, records, strict=True):
                answers[i] = (record.result, True)
                _count(record.result)
            return [a for a in answers if a is not None]
        raise Busy("too many concurrent changes to the same skus")

    async def _room(self, now: int) -> list[int] | None:
        """What each location may still give today (contract section 11); None when no
        location has a capacity."""
        if not self.projector.capacities:
            return None
        return self.projector.room(await self.store.capacity_used(now // US_PER_DAY))

    async def _skus_of(
        self, orders: Sequence[OrderRequest]
    ) -> tuple[dict[str, KitDefinition], list[str]]:
        """The kits among the orders' skus, and the skus to read: a kit's components in
        its place."""
        kits = await self.store.kit_records.of(
            list(dict.fromkeys(line.sku for o in orders for line in o.lines))
        )
        return kits, _read_for(orders, kits)

    # -- single orders, written in groups -------------------------------------------------

    async def _allocate_single(self, order: OrderRequest) -> tuple[OrderResult, bool]:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(order, fingerprint(order), correlation_id.get(), loop.create_future())
        writer = self._writer
        if writer is not None and writer.get_loop() is not loop:
            # Left by another event loop (tests run one per call): forget what it held.
            writer, self._waiting = None, [w for w in self._waiting if w.future.get_loop() is loop]
        self._waiting.append(waiting)
        if writer is None or writer.done():
            # Its own empty context: the group's work belongs to no single request.
            self._writer = loop.create_task(self._write_groups(), context=contextvars.Context())
        return await waiting.future

    async def _write_groups(self) -> None:
        """Write the waiting orders, a group at a time, until none is left. The group's wait
        for the broker runs in a task of its own, so the next group is written meanwhile."""
        while self._waiting:
            group: list[_Waiting] = []
            later: list[_Waiting] = []
            ids: set[str] = set()
            lines = 0
            for waiting in self._waiting:
                if waiting.future.done():
                    continue  # its request went away before anything was done: nothing to do
                # The same order_id twice in a group would pass both 'nx' checks: the second
                # goes in a later group, where it is answered as a repeat.
                fits = not group or (
                    len(group) < GROUP_MAX_ORDERS
                    and lines + len(waiting.order.lines) <= GROUP_MAX_LINES
                )
                if fits and waiting.order.order_id not in ids:
                    group.append(waiting)
                    ids.add(waiting.order.order_id)
                    lines += len(waiting.order.lines)
                else:
                    later.append(waiting)
            self._waiting = later
            if not group:
                continue
            try:
                await self._write_group(group)
            except BaseException as exc:
                for waiting in group:
                    _settle(waiting, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _write_group(self, group: list[_Waiting]) -> None:
        look_up = False
        tried: dict[str, StoredOrder] = {}  # the last write's records
        for _ in range(MAX_ATTEMPTS):
            if look_up:
                known = await self.stored([w.order.order_id for w in group])
                fresh = []
                for waiting, stored in zip(group, known, strict=True):
                    if stored is None:
                        fresh.append(waiting)
                    elif stored.fingerprint != waiting.fingerprint:
                        _settle(waiting, OrderConflict(waiting.order.order_id))
                    elif (record := _own(stored, tried)) is not None:
                        await self._publish_group([waiting], [record], self.clock())
                    else:
                        _settle(waiting, (stored.result, False))
                group = fresh
                if not group:
                    return
            orders = [w.order for w in group]
            kits, skus = await self._skus_of(orders)
            snapshot = await self.store.read(skus)
            now = self.clock()
            room = await self._room(now)
            try:
                planned = plan_in_turn(orders, snapshot.states, self.projector, now, kits, room)
            except Exception:
                if len(group) == 1:
                    raise
                # An order the engine refuses fails alone, not its group.
                group = self._without_refused(group, snapshot.states, now, kits, room)
                if not group:
                    return
                continue
            changes, records = self._write_of(
                planned, snapshot.versions, [w.fingerprint for w in group], now
            )
            tried = {r.result.order_id: r for r in records}
            try:
                if await self.store.write(changes, now // 1000):
                    continue  # a sku moved since the read: allocate again on fresh state
            except PutExists:
                look_up = True  # an order_id exists (a repeat, or allocated concurrently)
                continue
            except ProjectionMissing:
                if look_up:
                    raise
                look_up = True  # as with a look-up first, a stored order is still answered
                continue
            task = asyncio.get_running_loop().create_task(
                self._publish_group(group, records, now), context=contextvars.Context()
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        raise Busy("too many concurrent changes to the same skus")

    def _write_of(
        self, planned: Planned, versions: dict[str, int], prints: list[str], now: int
    ) -> tuple[ChangeSet, list[StoredOrder]]:
        """What one allocation write carries: the new states and projection, and each
        order's record, which must not exist yet (``nx``: a repeat or a concurrent twin)."""
        changes = build_changeset(
            planned.states, versions, self.projector, now, seen=planned.event_ids
        )
        count_capacity(changes, self.projector, planned.taken, now)
        attempt = secrets.token_hex(6)
        records = [
            StoredOrder(fp, result, held, attempt)
            for fp, result, held in zip(prints, planned.results, planned.held, strict=True)
        ]
        layout = self.store.layout
        changes.puts = [
            (layout.order_key(r.result.order_id), "nx", encode_stored(r)) for r in records
        ] + [
            (layout.unpublished_key(), f"h:{r.result.order_id}", str(now // 1000).encode())
            for r in records
        ]
        return changes, records

    def _without_refused(
        self,
        group: list[_Waiting],
        states: dict[str, SkuState],
        now: int,
        kits: Mapping[str, KitDefinition],
        room: Sequence[int] | None,
    ) -> list[_Waiting]:
        kept = []
        for waiting in group:
            mine = {sku: states[sku] for sku in _read_for([waiting.order], kits)}
            try:
                plan_in_turn([waiting.order], mine, self.projector, now, kits, room)
            except Exception as exc:
                _settle(waiting, exc)
            else:
                kept.append(waiting)
        return kept

    async def _publish_group(
        self, group: list[_Waiting], records: list[StoredOrder], now: int
    ) -> None:
        try:
            await self._publish_or_undo(records, now, [w.correlation_id for w in group])
        except BaseException as exc:
            for waiting in group:
                _settle(waiting, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for waiting, record in zip(group, records, strict=True):
            _count(record.result)
            _settle(waiting, (record.result, True))

    async def _publish_or_undo(
        self, records: list[StoredOrder], now_us: int, correlation_ids: Sequence[str | None]
    ) -> None:
        try:
            await self._send(self._messages(records, now_us, correlation_ids))
        except ProduceFailed:
            await self._release_orders(records, keep=False, counted_day=now_us // US_PER_DAY)
            raise PublishFailed("the broker did not acknowledge the reservations") from None
        await self._published([r.result.order_id for r in records])

    async def _published(self, order_ids: Sequence[str]) -> None:
        try:
            await self.store.client.hdel(self.store.layout.unpublished_key(), *order_ids)
        except RedisError:  # acknowledged all the same; a sweep publishes them once more
            log.warning("could not note orders %s as published", list(order_ids))

    async def publish_unpublished(self, older_than_ms: int = ORPHAN_AFTER_MS) -> int:
        """Publish the reservations of orders noted unpublished longer than ``older_than_ms``
        (their request ended without it) that still hold them; how many orders. Their
        events are those the request would have sent, so the consumer applies them once."""
        client, layout = self.store.client, self.store.layout
        page: Any = await client.hscan(layout.unpublished_key(), 0, count=500)
        noted: dict[bytes, bytes] = page[1]
        now_ms = self.clock() // 1000
        aged = [
            (order_id.decode(), int(ms))
            for order_id, ms in noted.items()
            if now_ms - int(ms) >= older_than_ms
        ]
        if not aged:
            return 0
        pipe = client.pipeline(transaction=False)
        for order_id, _ in aged:
            pipe.get(layout.order_key(order_id))
        raws: list[bytes | None] = await pipe.execute()
        done: list[str] = []
        due: list[tuple[StoredOrder, int]] = []
        for (order_id, ms), raw in zip(aged, raws, strict=True):
            if raw is None:
                done.append(order_id)  # undone: nothing holds
            elif raw[:1] != b"{":  # being written by several shards, or its writer died
                if await self._abandoned(order_id, raw, now_ms):
                    done.append(order_id)
            else:
                record = decode_stored(raw)
                if record.result.status == "released" or not record.held:
                    done.append(order_id)
                else:
                    due.append((record, ms))
        for record, ms in due:
            await self._send(self._messages([record], ms * 1000, [None]))
            done.append(record.result.order_id)
            log.warning("published the reservations of order %s", record.result.order_id)
        if done:
            await client.hdel(layout.unpublished_key(), *done)
        return len(due)

    async def _abandoned(self, order_id: str, raw: bytes, now_ms: int) -> bool:
        """Whether a record that is not final is settled now (ShardedAllocator's pending
        records); on one shard every record is final."""
        return False

    async def keep_publishing(self, every_s: float = SWEEP_UNPUBLISHED_S) -> None:
        """``publish_unpublished`` every ``every_s``, until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.publish_unpublished()
            except (RedisError, ProduceFailed, OSError) as exc:
                log.warning(
                    "the sweep of unpublished orders failed, again in %ss: %s", every_s, exc
                )

    def _messages(
        self, records: list[StoredOrder], now_us: int, correlation_ids: Sequence[str | None]
    ) -> list[Outgoing]:
        """The reservation_created events of ``records``' holds."""
        occurred = from_us(now_us)
        messages = []
        for record, cid in zip(records, correlation_ids, strict=True):
            headers = _headers(cid)
            for held in record.held:
                event = ReservationCreated(
                    event_id=created_event_id(held.reservation_id),
                    occurred_at=occurred,
                    sku=held.sku,
                    reservation_id=held.reservation_id,
                    channel=record.result.channel,
                    location=held.location,
                    quantity=held.quantity,
                    correlation_id=cid,
                )
                event = _with_backorder(event, held)
                messages.append(
                    Outgoing(self.topic, held.sku.encode(), msgspec.json.encode(event), headers)
                )
        return messages

    async def release(self, order_id: str) -> OrderResult | None:
        """Release every open reservation of the order; safe to repeat. None: unknown order."""
        (stored,) = await self.stored([order_id])
        if stored is None:
            return None
        if stored.result.status != "released":
            found = await self._release_orders([stored], keep=True)
            if not found:
                return None  # gone meanwhile: its allocation was undone (never acknowledged)
            (stored,) = found
            RELEASED_ORDERS.inc()
        # Announce (again, on a repeat: harmless, the event_ids are deterministic).
        now = self.clock()
        messages = [
            Outgoing(
                self.topic,
                h.sku.encode(),
                msgspec.json.encode(
                    ReservationReleased(
                        event_id=released_event_id(h.reservation_id),
                        occurred_at=from_us(now),
                        sku=h.sku,
                        reservation_id=h.reservation_id,
                        correlation_id=correlation_id.get(),
                    )
                ),
                _headers(correlation_id.get()),
            )
            for h in stored.held
        ]
        try:
            await self._send(messages)
        except ProduceFailed:
            raise PublishFailed("released, but the broker did not acknowledge the events") from None
        return stored.result

    async def _release_orders(
        self, orders: Sequence[StoredOrder], keep: bool, counted_day: int | None = None
    ) -> list[StoredOrder]:
        """Release what the orders hold now, in one write with the supply it frees going to
        the skus' backorders (contract section 9). ``keep``: store each order as released
        (DELETE); else remove its record and line records (an allocation undone), and give
        back the capacity its stock took on ``counted_day`` (a release gives none back).

        Each attempt reads the orders after the skus: a re-plan that replaced an order's
        reservations before the skus were read is in both reads, and one that lands after
        moves a sku's version, so the write is refused and the attempt made again."""
        # A kit line's reservations are its components' (in ``held``), not the kit's.
        skus = list(
            dict.fromkeys(
                [*(line.sku for o in orders for line in o.result.lines if line.components is None),
                 *(h.sku for o in orders for h in o.held)]
            )
        )  # fmt: skip
        ids = [o.result.order_id for o in orders]
        for _ in range(MAX_ATTEMPTS):
            snapshot = await self.store.read(skus)
            current = [o for o in await self.stored(ids) if o is not None]
            by_sku: dict[str, set[str]] = {}
            for h in (h for o in current if o.result.status != "released" for h in o.held):
                by_sku.setdefault(h.sku, set()).add(h.reservation_id)
            now = self.clock()
            changes = self._released(snapshot, skus, by_sku, now, await self._room(now))
            released = [
                msgspec.structs.replace(
                    o, result=msgspec.structs.replace(o.result, status="released")
                )
                for o in current
            ]
            if keep:
                changes.puts = [
                    (self.store.layout.order_key(o.result.order_id), "set", encode_stored(o))
                    for o in released
                ]
            else:  # removed in the same write: no record ever outlives what it held
                if counted_day is not None:
                    self._give_back(changes, current, counted_day)
                changes.puts = [
                    (self.store.layout.order_key(o.result.order_id), "del", b"") for o in current
                ]
                changes.puts += [
                    (
                        self.store.layout.lines_key(line.sku),
                        "hdel",
                        line_field(o.result.order_id, line.line_id).encode(),
                    )
                    for o in current
                    for line in backordered_lines(o)
                ]
            if not await self.store.write(changes, now // 1000):
                return released
        raise Busy("too many concurrent changes to the same skus")

    def _released(
        self,
        snapshot: Snapshot,
        skus: Sequence[str],
        by_sku: Mapping[str, set[str]],
        now: int,
        room: Sequence[int] | None = None,
    ) -> ChangeSet:
        """The write that releases ``by_sku``'s reservations (sku -> reservation ids) of
        ``skus`` as read, with the supply it frees going to their backorders (section 9)."""
        states = [release(snapshot.states[sku], by_sku.get(sku, set()), now) for sku in skus]
        changes, _ = build_replanned(
            states,
            snapshot.versions,
            self.projector,
            now,
            self.store.window_ms * 1000,
            seen={s: [released_event_id(r) for r in by_sku[s]] for s in skus if s in by_sku},
            room=room,
        )
        return changes

    def _give_back(self, changes: ChangeSet, undone: Sequence[StoredOrder], day: int) -> None:
        """An allocation that never happened takes no capacity: its stock units come off
        the day's counts, in the write that undoes it (unless that write counts another
        day, past midnight: then they stay)."""
        capacities = self.projector.capacities
        units: dict[str, int] = {}
        for o in undone:
            for h in o.held:
                if not h.placed_at and h.location in capacities:
                    units[h.location] = units.get(h.location, 0) + h.quantity
        if not units or (changes.capacity and changes.capacity_day != day):
            return
        changes.capacity_day = day
        for location, n in units.items():
            before = changes.capacity.get(location, (0, 0))[0]
            changes.capacity[location] = (before - n, capacities[location])

    async def set_safety_stock(self, channel: str, sku: str, quantity: int | None) -> None:
        """Set (or with None remove) a per-sku override and recompute the projection now."""
        for _ in range(MAX_ATTEMPTS):
            snapshot = await self.store.read([sku])
            state = snapshot.states[sku]
            overrides = dict(state.safety_stock)
            if quantity is None:
                overrides.pop(channel, None)
            else:
                overrides[channel] = quantity
            now = self.clock()
            seq = state.override_seq + 1
            changes, _ = build_replanned(
                [msgspec.structs.replace(state, safety_stock=overrides, override_seq=seq)],
                snapshot.versions,
                self.projector,
                now,
                self.store.window_ms * 1000,
                room=await self._room(now),
            )
            if not await self.store.write(changes, now // 1000):
                break
        else:
            raise Busy("too many concurrent changes to the same sku")
        await self._record(OverrideChanged("safety_stock", channel, sku, quantity, now, seq))

    async def set_kit(self, sku: str, components: tuple[KitComponent, ...] | None) -> bool:
        """Define (None: delete) a kit over HTTP (contract section 10); its values follow
        within the sweep. False: there is no such kit to delete. KitRefused: not allowed."""
        records = self.store.kit_records
        for _ in range(MAX_ATTEMPTS):
            found, version = await records.all()
            old = found.get(sku)
            seq = old.seq if old is not None else 0
            if components is None:
                if old is None or not old.components:
                    return False
                record = KitRecord(sku, (), "api", seq + 1)
            else:
                check_kit(KitDefinition(sku, components), definitions(found.values()))
                record = KitRecord(sku, components, "api", seq + 1)
            now = self.clock()
            try:
                await records.put(sku, record, now // 1000, seq, version)
            except SeqMoved:
                continue
            break
        else:
            raise Busy("too many concurrent changes to the same kit")
        await self._record(OverrideChanged("kit", "", sku, None, now, record.seq, components))
        return True

    async def _record(self, change: OverrideChanged) -> None:
        """Record a change made over HTTP where `atp rebuild` finds it after a loss of
        Redis data; answered only once the broker has it (a failure answers 503: the change
        is in effect, and a repeat records it)."""
        message = Outgoing(self.overrides_topic, message_key(change), encode(change))
        try:
            await self._send([message])
        except ProduceFailed:
            raise PublishFailed("set, but the broker did not acknowledge the record") from None
