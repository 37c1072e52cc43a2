"""Allocation as check-and-reserve, atomic in Redis with the projection.

1. Orders already stored are answered from the store (same body) or refused (other body).
2. Read the skus' states and versions; allocate every new line in one vectorized call.
3. One write script: new states + projection + the orders' records (``nx``) + dedupe marks of
   the reservation events, refused as a whole if any sku changed since the read (then 2
   again) or an order appeared meanwhile (then 1 again).
4. Publish every reservation as ``reservation_created`` (idempotent producer, acks=all) and
   answer only after the broker acknowledged. If it does not, the reservations are released
   again and the order record removed: no acknowledged allocation exists only in Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import msgspec
from prometheus_client import Counter

from atp_service import keys
from atp_service.logs import HEADER as CORRELATION_HEADER
from atp_service.logs import correlation_id
from atp_service.orders import (
    Held,
    OrderRequest,
    OrderResult,
    StoredOrder,
    created_event_id,
    decode_stored,
    encode_stored,
    fingerprint,
    plan,
    release,
    released_event_id,
)
from atp_service.store import AsyncRedisStore, PutExists
from streams.changeset import build_changeset
from streams.events import ReservationCreated, ReservationReleased
from streams.kafka import Outgoing, ProduceFailed
from streams.projector import Projector
from streams.state import SkuState, from_us

MAX_ATTEMPTS: Final = 50
ALLOCATED_UNITS: Final = Counter(
    "atp_allocation_units_total", "Units requested by allocations, by outcome", ["outcome"]
)
RELEASED_ORDERS: Final = Counter("atp_released_orders_total", "Orders released over the API")
PUBLISH_TIMEOUT_S: Final = 5.0


class OrderConflict(Exception):
    """The order_id exists with a different body (409)."""

    def __init__(self, order_id: str) -> None:
        super().__init__(order_id)
        self.order_id = order_id


class PublishFailed(Exception):
    """The broker did not acknowledge; the reservations were undone (503)."""


class Busy(Exception):
    """Too many concurrent writers on the same skus; retry (503)."""


def _now_us() -> int:
    return time.time_ns() // 1000


def _headers() -> list[tuple[str, bytes]]:
    cid = correlation_id.get()
    return [(CORRELATION_HEADER, cid.encode())] if cid else []


class Allocator:
    def __init__(
        self,
        store: AsyncRedisStore,
        projector: Projector,
        send: Callable[[Sequence[Outgoing], float], Awaitable[None] | None],
        reservations_topic: str,
        clock: Callable[[], int] = _now_us,
    ) -> None:
        self.store = store
        self.projector = projector
        self.send = send
        self.topic = reservations_topic
        self.clock = clock

    async def _send(self, messages: list[Outgoing]) -> None:
        # An async sender awaits its own acknowledgements; a blocking one runs in a thread.
        if asyncio.iscoroutinefunction(self.send):
            await self.send(messages, PUBLISH_TIMEOUT_S)
        else:
            await asyncio.to_thread(self.send, messages, PUBLISH_TIMEOUT_S)

    async def stored(self, order_ids: Sequence[str]) -> list[StoredOrder | None]:
        if not order_ids:
            return []
        found: list[bytes | None] = await self.store.client.mget([keys.order_key(o) for o in order_ids])  # type: ignore[assignment]
        return [decode_stored(raw) if raw else None for raw in found]

    async def allocate(self, orders: Sequence[OrderRequest]) -> list[tuple[OrderResult, bool]]:
        """Allocate; each result says whether it was created now (False: a stored repeat)."""
        prints = [fingerprint(o) for o in orders]
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
                else:
                    answers.append((stored.result, False))
            if not fresh:
                return [a for a in answers if a is not None]
            new_orders = [orders[i] for i in fresh]
            skus = list(dict.fromkeys(line.sku for o in new_orders for line in o.lines))
            snapshot = await self.store.read(skus)
            now = self.clock()
            planned = plan(new_orders, snapshot.states, self.projector, now)
            changes = build_changeset(
                planned.states, snapshot.versions, self.projector, now, seen=planned.event_ids
            )
            records = [
                StoredOrder(prints[i], result, held)
                for i, result, held in zip(fresh, planned.results, planned.held, strict=True)
            ]
            changes.puts = [
                (keys.order_key(r.result.order_id), "nx", encode_stored(r)) for r in records
            ]
            try:
                if await self.store.write(changes, now // 1000):
                    continue  # a sku moved since the read: allocate again on fresh state
            except PutExists:
                continue  # the same order_id was allocated concurrently: answer as a repeat
            await self._publish_or_undo(records, now)
            for i, record in zip(fresh, records, strict=True):
                answers[i] = (record.result, True)
                for line in record.result.lines:
                    ALLOCATED_UNITS.labels("allocated").inc(sum(a.quantity for a in line.allocations))
                    ALLOCATED_UNITS.labels("backordered").inc(line.backordered)
                    ALLOCATED_UNITS.labels("unfilled").inc(line.unfilled)
            return [a for a in answers if a is not None]
        raise Busy("too many concurrent changes to the same skus")

    async def _publish_or_undo(self, records: list[StoredOrder], now_us: int) -> None:
        occurred = from_us(now_us)
        channel_of = {r.result.order_id: r.result.channel for r in records}
        messages = []
        for record in records:
            for held in record.held:
                event = ReservationCreated(
                    event_id=created_event_id(held.reservation_id),
                    occurred_at=occurred,
                    sku=held.sku,
                    reservation_id=held.reservation_id,
                    channel=channel_of[record.result.order_id],
                    location=held.location,
                    quantity=held.quantity,
                    correlation_id=correlation_id.get(),
                )
                messages.append(
                    Outgoing(self.topic, held.sku.encode(), msgspec.json.encode(event), _headers())
                )
        try:
            await self._send(messages)
        except ProduceFailed:
            held_all = [h for r in records for h in r.held]
            await self._release_held(held_all, extra_deletes=[keys.order_key(r.result.order_id) for r in records])
            raise PublishFailed("the broker did not acknowledge the reservations") from None

    async def release(self, order_id: str) -> OrderResult | None:
        """Release every open reservation of the order; safe to repeat. None: unknown order."""
        (stored,) = await self.stored([order_id])
        if stored is None:
            return None
        released = msgspec.structs.replace(
            stored, result=msgspec.structs.replace(stored.result, status="released")
        )
        if stored.result.status != "released":
            RELEASED_ORDERS.inc()
            await self._release_held(
                stored.held, puts=[(keys.order_key(order_id), "set", encode_stored(released))]
            )
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
                _headers(),
            )
            for h in stored.held
        ]
        try:
            await self._send(messages)
        except ProduceFailed:
            raise PublishFailed("released, but the broker did not acknowledge the events") from None
        return released.result

    async def _release_held(
        self,
        held: Sequence[Held],
        puts: list[tuple[str, str, bytes]] | None = None,
        extra_deletes: Sequence[str] = (),
    ) -> None:
        by_sku: dict[str, set[str]] = {}
        for h in held:
            by_sku.setdefault(h.sku, set()).add(h.reservation_id)
        for _ in range(MAX_ATTEMPTS):
            snapshot = await self.store.read(list(by_sku))
            now = self.clock()
            states: list[SkuState] = [
                release(snapshot.states[sku], ids, now) for sku, ids in by_sku.items()
            ]
            changes = build_changeset(
                states,
                snapshot.versions,
                self.projector,
                now,
                seen={sku: [released_event_id(r) for r in ids] for sku, ids in by_sku.items()},
            )
            changes.puts = list(puts or [])
            if not await self.store.write(changes, now // 1000):
                if extra_deletes:
                    await self.store.client.delete(*extra_deletes)
                return
        raise Busy("too many concurrent changes to the same skus")

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
            changes = build_changeset(
                [msgspec.structs.replace(state, safety_stock=overrides)],
                snapshot.versions,
                self.projector,
                now,
            )
            if not await self.store.write(changes, now // 1000):
                return
        raise Busy("too many concurrent changes to the same sku")
