"""Allocation on a Redis Cluster, where an order's lines live in several shards and its
record in none of them: written in steps, with the order's record saying how far it got.

1. Claim: the order's record is set, if absent, to a *pending* record: this attempt's token,
   when it started, and what it holds so far. A repeat finds the record: a final one is
   answered (or refused if the body differs); a pending one is waited for, or taken over
   once it is older than PENDING_S (its writer died), after releasing what it held.
2. Read the lines' skus and plan them; the pending record then names the reservations about
   to be made, so that whoever takes it over can release them.
3. Write each shard's part: atomic and version-checked per shard, as on a single Redis, so
   no location is ever reserved beyond what it has. Parts that landed stay; the lines of a
   part refused because a sku moved are planned again on a fresh read (2 and 3 again). An
   order with a kit's line keeps all or nothing of an attempt: a kit's components may be in
   several parts, and the kit takes whole kits only.
4. The final record replaces the pending one, only while the pending one is still ours.
5. Publish the reservations; if the broker does not acknowledge them, they are released
   and the record removed, as on a single Redis. The order is noted unpublished from its
   claim until then, so that a sweep publishes it if its request dies after step 4, or
   releases what a pending record older than PENDING_S holds if no repeat took it over.

A write whose reply is lost can have landed: redis-py sends a command again after a
connection reset, and the script then finds its own work done. So a claim that finds this
attempt's own pending record has it, a part refused is first looked for in the fresh read
(its reservations there, open: it landed), and a final record that is already this record
was written.

Orders of a batch are allocated one after another, by channel priority and then as given:
each as a single order would be on what the ones before it left. Releases are written shard
by shard the same way, then the record says "released"; a repeat finishes what a crash left.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import msgspec

from atp_service.allocator import MAX_ATTEMPTS, Allocator, Busy, OrderConflict, _count
from atp_service.orders import (
    Held,
    LineResult,
    OrderRequest,
    OrderResult,
    StoredOrder,
    backordered_lines,
    decode_stored,
    encode_stored,
    fingerprint,
    plan,
)
from atp_service.store.async_store import AsyncRedisStore
from streams.backorders import line_field
from streams.changeset import build_changeset, claim_capacity, claim_key
from streams.logs import correlation_id
from streams.state import US_PER_DAY, SkuState

log = logging.getLogger(__name__)
PENDING_S: Final = 10.0  # a pending record older than this belongs to a writer that died
WAIT_S: Final = 0.02  # between looks at a pending record of a live writer

# A pending record: this prefix, the attempt's token, a separator, then Pending as JSON.
# Stored records are JSON objects, so they never start with it.
PENDING_MARK: Final = b"P"


class Pending(msgspec.Struct, frozen=True):
    fingerprint: str
    since_ms: int
    held: list[Held]


_pending_decoder: Final = msgspec.json.Decoder(Pending)

# KEYS: 1 the order's record. ARGV: 1 the value's expected start (a pending record's mark
# and token), 2 the new value ('' removes the record). Returns 1 when replaced, else 0.
_SWAP: Final = """
local value = redis.call('GET', KEYS[1])
if not value or string.sub(value, 1, #ARGV[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"""


def _holding(state: SkuState, holds: Sequence[Held]) -> bool:
    """Whether the sku holds these reservations open: ids an attempt chose as unused in
    the state it read, so only its own write can have made them."""
    open_ids = {r.reservation_id for r in state.reservations if r.created and not r.released}
    return all(h.reservation_id in open_ids for h in holds)


def _stock(held: Sequence[Held]) -> list[tuple[str, str, str, int]]:
    """(sku, reservation_id, location, units) of the reservations of stock among ``held``
    (a backorder's takes no capacity until it is converted)."""
    return [(h.sku, h.reservation_id, h.location, h.quantity) for h in held if not h.placed_at]


def _pending_value(token: bytes, pending: Pending) -> bytes:
    return PENDING_MARK + token + b"\x1f" + msgspec.json.encode(pending)


def _parse_pending(raw: bytes) -> tuple[bytes, Pending]:
    head, _, body = raw.partition(b"\x1f")
    return head, _pending_decoder.decode(body)


class ShardedAllocator(Allocator):
    """The Allocator for a store kept in several shards (docs/scaling.md)."""

    def __init__(self, store: AsyncRedisStore, *args: Any, **kwargs: Any) -> None:
        super().__init__(store, *args, **kwargs)
        self._swap = store.client.register_script(_SWAP)

    async def allocate(self, orders: Sequence[OrderRequest]) -> list[tuple[OrderResult, bool]]:
        network = self.projector.network
        priority = dict(zip(network.channels, network.priority.tolist(), strict=True))
        order_of = sorted(range(len(orders)), key=lambda i: (priority[orders[i].channel], i))
        answers: dict[int, tuple[OrderResult, bool]] = {}
        for i in order_of:
            answers[i] = await self._allocate_one(orders[i])
        return [answers[i] for i in range(len(orders))]

    # -- one order ----------------------------------------------------------------------

    async def _allocate_one(self, order: OrderRequest) -> tuple[OrderResult, bool]:
        print_ = fingerprint(order)
        key = self.store.layout.order_key(order.order_id)
        token = secrets.token_hex(8).encode()
        mine = PENDING_MARK + token
        claimed = False
        for _ in range(MAX_ATTEMPTS * 10):
            now_ms = time.time_ns() // 1_000_000
            value = _pending_value(token, Pending(print_, now_ms, []))
            if await self.store.client.set(key, value, nx=True):
                claimed = True
                break
            raw = await self._raw_record(key)
            if raw is None:
                continue  # removed meanwhile (an undo): claim again
            if raw.startswith(mine):  # this claim, sent again after a lost reply
                claimed = True
                break
            if not raw.startswith(PENDING_MARK):
                if decode_stored(raw).fingerprint != print_:
                    raise OrderConflict(order.order_id)
                (stored,) = await self.stored([order.order_id])  # as re-planned since
                if stored is not None:
                    return stored.result, False
                continue
            head, pending = _parse_pending(raw)
            if pending.fingerprint != print_:
                raise OrderConflict(order.order_id)
            if now_ms - pending.since_ms < PENDING_S * 1000:
                await asyncio.sleep(WAIT_S)  # its writer is at work: wait for its answer
                continue
            # Its writer died: take the record over, then release what it may have made.
            if await self._swap(keys=[key], args=[head + b"\x1f", value]):
                await self._release_held(pending.held)
                claimed = True
                break
        if not claimed:
            raise Busy(f"order {order.order_id!r} is being allocated by another request")
        # Before anything is held: noted until published (``Allocator.publish_unpublished``).
        unpublished = self.store.layout.unpublished_key()
        await self.store.client.hset(unpublished, order.order_id, str(self.clock() // 1000))
        try:
            record = await self._write_lines(order, print_, key, token)
        except BaseException:
            # Nothing acknowledged: what this attempt made goes, so that a retry starts
            # clean (a crash before this leaves it to the next taker-over).
            raw = await self._raw_record(key)
            if raw is not None and raw.startswith(mine):
                await self._release_held(_parse_pending(raw)[1].held)
                await self._swap(keys=[key], args=[mine, b""])
            raise
        await self._publish_or_undo([record], self.clock(), [correlation_id.get()])
        _count(record.result)
        return record.result, True

    async def _raw_record(self, key: str) -> bytes | None:
        raw = await self.store.client.get(key)
        return raw if isinstance(raw, bytes) else None

    async def _write_lines(
        self, order: OrderRequest, print_: str, key: str, token: bytes
    ) -> StoredOrder:
        """Steps 2 to 4: every line planned and written shard by shard; the final record.
        If the record was taken over meanwhile (this writer stalled past PENDING_S), what
        this attempt made is released again and Busy raised."""
        mine = PENDING_MARK + token
        results: dict[str, LineResult] = {}
        held: list[Held] = []
        claimed: set[str] = set()  # capacity claims of every attempt (store/capacity.py)
        day = self.clock() // US_PER_DAY
        left = list(order.lines)
        # Lines of parts refused, with what they were to hold: refused, or landed with the
        # reply lost (the fresh read tells).
        unsure: dict[str, tuple[list[LineResult], list[Held]]] = {}
        for _ in range(MAX_ATTEMPTS):
            kits, skus = await self._skus_of([msgspec.structs.replace(order, lines=left)])
            snapshot = await self.store.read(skus)
            for sku, (lines, holds) in unsure.items():
                if holds and _holding(snapshot.states[sku], holds):
                    results.update((line.line_id, line) for line in lines)
                    held += holds
            left = [line for line in left if line.line_id not in results]
            unsure = {}
            if not left:
                break
            part = msgspec.structs.replace(order, lines=left)
            now = self.clock()
            room = await self._room(now)
            planned = plan([part], snapshot.states, self.projector, now, kits=kits, room=room)
            making = planned.held[0]
            pending = Pending(print_, time.time_ns() // 1_000_000, held + making)
            if not await self._swap(keys=[key], args=[mine, _pending_value(token, pending)]):
                await self._taken_over(order, held)
            changes = build_changeset(
                planned.states, snapshot.versions, self.projector, now, seen=planned.event_ids
            )
            claim_capacity(changes, self.projector, _stock(making), now)
            claimed.update(changes.claims)
            day = changes.capacity_day or day
            moved = set(await self.store.write_each(changes, now // 1000))
            if moved and kits:
                # A kit's line holds every component or none (contract section 10), and its
                # components may be in parts that landed: what this attempt made goes
                # (found in a fresh read, so a part whose reply was lost goes too), and the
                # lines are planned again whole.
                await self._release_held(making)
                continue
            for line in planned.results[0].lines:
                if line.sku not in moved:
                    results[line.line_id] = line
                else:
                    unsure.setdefault(line.sku, ([], []))[0].append(line)
            for h in making:
                if h.sku in moved:
                    unsure[h.sku][1].append(h)
                else:
                    held.append(h)
            left = [line for line in left if line.sku in moved]
            if not left:
                break
        else:
            await self.store.claims.give_back(claimed, [day])  # nothing is kept: see above
            raise Busy("too many concurrent changes to the same skus")
        # Claims of reservations that were refused and not made again: never made.
        kept = {claim_key(sku, rid) for sku, rid, _, _ in _stock(held)}
        await self.store.claims.give_back(claimed - kept, [day])
        result = OrderResult(
            order.order_id,
            order.channel,
            "allocated",
            [results[line.line_id] for line in order.lines],
        )
        record = StoredOrder(print_, result, held)
        final = encode_stored(record)
        swapped = await self._swap(keys=[key], args=[mine, final])
        if not swapped and await self._raw_record(key) != final:  # else: its reply was lost
            await self._taken_over(order, held)
        return record

    async def _abandoned(self, order_id: str, raw: bytes, now_ms: int) -> bool:
        """A pending record older than PENDING_S whose writer died, and that no repeat took
        over: what it may hold is released and the record removed, as a repeat would
        before allocating again. Taken over first, so that a sweep dying meanwhile leaves
        a pending record (of its own) for the next."""
        head, pending = _parse_pending(raw)
        if now_ms - pending.since_ms < PENDING_S * 1000:
            return False
        key = self.store.layout.order_key(order_id)
        token = secrets.token_hex(8).encode()
        mine = _pending_value(token, msgspec.structs.replace(pending, since_ms=now_ms))
        if not await self._swap(keys=[key], args=[head + b"\x1f", mine]):
            return False  # a repeat took it over meanwhile: its request settles it
        await self._release_held(pending.held)
        await self._swap(keys=[key], args=[PENDING_MARK + token, b""])
        log.warning("released what the abandoned allocation of order %s held", order_id)
        return True

    async def _taken_over(self, order: OrderRequest, held: Sequence[Held]) -> NoReturn:
        await self._release_held(held)
        raise Busy(f"order {order.order_id!r} was taken over while being allocated")

    async def _release_held(self, held: Sequence[Held]) -> None:
        """Release reservations made for an order that was never answered (no event of
        them was published), shard by shard until each shard's part landed; the capacity
        their stock claimed (today or, past midnight, yesterday) is given back."""
        by_sku: dict[str, set[str]] = {}
        for h in held:
            by_sku.setdefault(h.sku, set()).add(h.reservation_id)
        await self._write_released(by_sku)
        today = self.clock() // US_PER_DAY
        names = [claim_key(sku, rid) for sku, rid, _, _ in _stock(held)]
        await self.store.claims.give_back(names, [today - 1, today])

    async def _write_released(self, by_sku: dict[str, set[str]]) -> None:
        left = list(by_sku)
        for _ in range(MAX_ATTEMPTS):
            if not left:
                return
            snapshot = await self.store.read(left)
            now = self.clock()
            changes = self._released(snapshot, left, by_sku, now, await self._room(now))
            left = list(await self.store.write_each(changes, now // 1000))
        raise Busy("too many concurrent changes to the same skus")

    # -- releases -------------------------------------------------------------------------

    async def _release_orders(
        self, orders: Sequence[StoredOrder], keep: bool, counted_day: int | None = None
    ) -> list[StoredOrder]:
        """As on a single Redis, written shard by shard: the reservations first, then each
        order's record (released, or removed with its line records when ``keep`` is
        false). A crash between the two leaves the record as it was: a repeat releases
        nothing more and writes the record."""
        current = [o for o in await self.stored([o.result.order_id for o in orders]) if o]
        by_sku: dict[str, set[str]] = {}
        for h in (h for o in current if o.result.status != "released" for h in o.held):
            by_sku.setdefault(h.sku, set()).add(h.reservation_id)
        await self._write_released(by_sku)
        if counted_day is not None and not keep:  # an allocation undone: never made
            names = [claim_key(sku, rid) for o in current for sku, rid, _, _ in _stock(o.held)]
            await self.store.claims.give_back(names, [counted_day])
        released = [
            msgspec.structs.replace(o, result=msgspec.structs.replace(o.result, status="released"))
            for o in current
        ]
        layout = self.store.layout
        pipe = self.store.client.pipeline(transaction=False)
        for o in released if keep else current:
            key = layout.order_key(o.result.order_id)
            if keep:
                pipe.set(key, encode_stored(o))
            else:
                pipe.delete(key)
                for line in backordered_lines(o):
                    pipe.hdel(
                        layout.lines_key(line.sku), line_field(o.result.order_id, line.line_id)
                    )
        await pipe.execute()
        return released
