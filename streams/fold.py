"""The fold: events + raw state -> new raw state. Pure: no I/O, no clock (``now`` is passed).

Every rule of the contract's section 2 lives here, and only here:

- an event whose ``event_id`` was already applied is ignored (``seen``);
- ``on_hand`` is kept per (location, bin, status); a cycle count sets a bin exactly, and a
  movement side older than the latest applied count of that bin and status is ignored;
- a stock snapshot is a count of every bin it lists and a count of 0 of every other bin
  the sku holds at its location, all at its time;
- a shipment (``to_*`` null) with a ``reservation_id`` consumes that reservation;
- a consumption or a release that arrives before its ``reservation_created`` is remembered
  and applied when the reservation arrives, so the result does not depend on that order;
- a second ``reservation_created`` for a known ``reservation_id`` is ignored;
- inbound lines are upserted by ``inbound_id``; the latest ``occurred_at`` wins.

Closed reservations, inbound tombstones and zero, uncounted bins are pruned once they are
older than the dedupe window, which bounds the state of a sku.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Final

from msgspec import UNSET

from streams.events import (
    TAGS,
    AnyEvent,
    BinCount,
    BinMovement,
    Inbound,
    ReservationCreated,
    ReservationReleased,
    StockSnapshot,
)
from streams.state import (
    NO_PROMISE,
    RECENT_KEPT,
    RECENT_TYPES,
    BinStock,
    InboundLine,
    Recent,
    Reservation,
    SkuState,
    to_day,
    to_us,
)

BinKey = tuple[str, str, str]  # (location, bin, status)

# Records keep one shared string per location, bin, status and channel rather than the one
# each event decoded. Walking a batch's states (copying, projecting, encoding them) is
# mostly waiting for memory; shared strings stay in the CPU caches, and a state has fewer
# objects apart.
intern = sys.intern


@dataclass
class _Work:
    """A mutable copy of one SkuState while events are folded into it."""

    sku: str
    bins: dict[BinKey, BinStock]
    reservations: dict[str, Reservation]
    inbound: dict[str, InboundLine]
    source: SkuState
    snapshots: dict[str, int]
    applied: list[AnyEvent]  # events applied to this sku in this fold, for ``recent``

    @classmethod
    def of(cls, state: SkuState) -> _Work:
        return cls(
            sku=state.sku,
            bins={(b.location, b.bin, b.status): b for b in state.bins},
            reservations={r.reservation_id: r for r in state.reservations},
            inbound={i.inbound_id: i for i in state.inbound},
            source=state,
            snapshots=state.snapshots,
            applied=[],
        )

    def freeze(self, now_us: int, window_us: int) -> SkuState:
        return _frozen(
            self.source,
            self.bins.values(),
            self.reservations.values(),
            self.inbound.values(),
            self.snapshots,
            # Only the last few events become entries: a batch may apply thousands to a sku.
            [
                Recent(e.event_id, RECENT_KIND[type(e)], to_us(e.occurred_at))
                for e in self.applied[-RECENT_KEPT:]
            ],
            now_us,
            window_us,
        )


def _frozen(
    source: SkuState,
    bins: Iterable[BinStock],
    reservations: Iterable[Reservation],
    inbound: Iterable[InboundLine],
    snapshots: dict[str, int],
    latest: list[Recent],
    now_us: int,
    window_us: int,
) -> SkuState:
    """The state once events were applied to ``source`` (``latest``: the last of them, as
    entries): closed records older than the window pruned, the last events listed."""
    horizon = now_us - window_us
    return SkuState(
        sku=source.sku,
        bins=tuple(b for b in bins if b.quantity != 0 or (b.counted_at and b.counted_at > horizon)),
        # Most reservations are open and never expire: the first test keeps them.
        reservations=tuple(
            r
            for r in reservations
            if (not r.closed_at and not r.expires_at)
            or (closed := _closed_since(r, now_us)) == 0
            or closed > horizon
        ),
        inbound=tuple(i for i in inbound if i.quantity > 0 or i.occurred_at > horizon),
        safety_stock=source.safety_stock,
        last_ats=source.last_ats,
        snapshots=snapshots,
        recent=(*source.recent, *latest)[-RECENT_KEPT:],
        override_seq=source.override_seq,
        kit=source.kit,
    )


def _closed_since(reservation: Reservation, now_us: int) -> int:
    """When the reservation stopped counting, or 0 while it still counts (or may yet)."""
    if reservation.closed_at:
        return reservation.closed_at
    if reservation.created and reservation.expires_at and reservation.expires_at <= now_us:
        return reservation.expires_at
    return 0


@dataclass
class FoldResult:
    states: dict[str, SkuState]
    touched: set[str] = field(default_factory=set)
    applied: list[AnyEvent] = field(default_factory=list)
    duplicates: list[AnyEvent] = field(default_factory=list)


def fold(
    states: Mapping[str, SkuState],
    events: Iterable[AnyEvent],
    *,
    seen: Set[str],
    now_us: int,
    window_us: int,
) -> FoldResult:
    """Fold a batch of events into the states of their skus.

    Args:
        states: the current state of (at least) every sku the events name; a missing sku
            starts empty.
        events: in the order they are to be applied (per sku, the partition order).
        seen: event_ids already applied before this batch (the dedupe marks).
        now_us: the current time, used only to stamp closures for pruning.
        window_us: how long closed records are kept (the dedupe window).

    Returns:
        The new state of every touched sku, the touched skus, and the events applied and
        ignored as duplicates. The inputs are not modified.
    """
    work: dict[str, _Work] = {}
    result = FoldResult(states={})
    applied, duplicates = result.applied, result.duplicates
    batch_seen: set[str] = set()
    for event in events:
        event_id = event.event_id
        if event_id in seen or event_id in batch_seen:
            duplicates.append(event)
            continue
        batch_seen.add(event_id)
        target = work.get(event.sku)
        if target is None:
            state = states.get(event.sku) or SkuState(sku=event.sku)
            target = work[event.sku] = _Work.of(state)
        # By exact type (events are decoded into these classes only): a dict lookup, not a
        # chain of isinstance checks, as this runs per event.
        _APPLY[type(event)](target, event, now_us)
        target.applied.append(event)
        applied.append(event)
    for sku, target in work.items():
        result.states[sku] = target.freeze(now_us, window_us)
        result.touched.add(sku)
    return result


def fold_own(
    state: SkuState,
    latest: list[Recent],
    released: Set[str],
    created: Sequence[Reservation],
    now_us: int,
    window_us: int,
) -> SkuState:
    """``fold`` of reservation events atp made for a sku from its state (a re-plan's,
    streams/backorders.py), without applying them one by one: ``latest`` lists the last of
    them; they release ``released``, reservations the state holds open, and create the
    reservations ``created``, whose ids the state does not hold, with the records
    ``_apply_created`` makes of them. The same state as ``fold`` of the events gives (the
    backorder property tests hold it)."""
    closed: list[Reservation] = []
    if released:
        closed = [
            _released(r, now_us) if r.reservation_id in released else r for r in state.reservations
        ]
    reservations = chain(closed or state.reservations, created)
    return _frozen(
        state,
        state.bins,
        reservations,
        state.inbound,
        state.snapshots,
        latest,
        now_us,
        window_us,
    )


def _released(current: Reservation, now_us: int) -> Reservation:
    return Reservation(
        current.reservation_id,
        current.created,
        current.channel,
        current.location,
        current.quantity,
        current.consumed,
        True,
        current.expires_at,
        current.closed_at or now_us,
        current.placed_at,
        current.promise_day,
    )


def _apply_movement(work: _Work, event: BinMovement, now_us: int) -> None:
    if event.from_bin is not None and event.from_status is not None:
        _move(work, (event.location, event.from_bin, event.from_status), -event.quantity, event)
    if event.to_bin is not None and event.to_status is not None:
        _move(work, (event.location, event.to_bin, event.to_status), event.quantity, event)
    elif event.reservation_id is not None:
        # Stock left the location against a reservation: the shipment consumes it, so
        # on_hand and reserved drop together and available_to_sell does not drop twice.
        # The consumption counts even if a count already included the stock leaving.
        _consume(work, event.reservation_id, event.quantity, now_us)


def _move(work: _Work, key: BinKey, delta: int, event: BinMovement) -> None:
    current = work.bins.get(key)
    counted_at = current.counted_at if current is not None else 0
    if work.snapshots:
        counted_at = max(counted_at, work.snapshots.get(key[0], 0))
    # The movement's time matters only against a count, so it is converted only then.
    if counted_at and to_us(event.occurred_at) < counted_at:
        return  # the count already includes this movement
    if current is None:
        work.bins[key] = BinStock(intern(key[0]), intern(key[1]), intern(key[2]), delta)
        return
    work.bins[key] = BinStock(
        current.location, current.bin, current.status, current.quantity + delta, current.counted_at
    )


def _apply_count(work: _Work, event: BinCount, now_us: int) -> None:
    _count(
        work, (event.location, event.bin, event.status), event.quantity, to_us(event.occurred_at)
    )


def _apply_snapshot(work: _Work, event: StockSnapshot, now_us: int) -> None:
    """A count of every listed (bin, status), and a count of 0 of every other one at the
    location, all at the snapshot's time. The location keeps the snapshot's time, so that
    the zero count covers bins the state does not hold (pruned at 0, or not yet seen):
    their older movements are ignored too. An unlisted bin counted later keeps its count."""
    at = to_us(event.occurred_at)
    location = event.location
    if at < work.snapshots.get(location, 0):
        return  # a newer snapshot of the location counted every bin after this one
    work.snapshots = {**work.snapshots, location: at}
    listed = {(b.bin, b.status): b.quantity for b in event.bins}
    for key in [k for k in work.bins if k[0] == location and (k[1], k[2]) not in listed]:
        if work.bins[key].counted_at <= at:
            del work.bins[key]  # 0 now, and the location's time stands for its count
    for (bin_, status), quantity in listed.items():
        _count(work, (location, bin_, status), quantity, at)


def _count(work: _Work, key: BinKey, quantity: int, at: int) -> None:
    current = work.bins.get(key)
    if work.snapshots and at < work.snapshots.get(key[0], 0):
        return  # older than the location's latest snapshot, which counted this bin too
    if current is None:
        work.bins[key] = BinStock(intern(key[0]), intern(key[1]), intern(key[2]), quantity, at)
    elif not (current.counted_at and at < current.counted_at):  # else an older count
        work.bins[key] = BinStock(current.location, current.bin, current.status, quantity, at)


def _consume(work: _Work, reservation_id: str, quantity: int, now_us: int) -> None:
    current = work.reservations.get(reservation_id) or Reservation(reservation_id, created=False)
    consumed = current.consumed + quantity
    closed_at = current.closed_at
    # A pending entry (no reservation_created yet) is stamped too, so that one whose
    # reservation never arrives is pruned after the window.
    if not closed_at and (not current.created or consumed >= current.quantity):
        closed_at = now_us
    work.reservations[reservation_id] = Reservation(
        reservation_id,
        current.created,
        current.channel,
        current.location,
        current.quantity,
        consumed,
        current.released,
        current.expires_at,
        closed_at,
        current.placed_at,
        current.promise_day,
    )


def _apply_created(work: _Work, event: ReservationCreated, now_us: int) -> None:
    current = work.reservations.get(event.reservation_id)
    if current is not None and current.created:
        return  # a second reservation_created for a known reservation is ignored
    consumed = current.consumed if current else 0
    released = current.released if current else False
    # A consumption or release that came first closes the reservation on arrival; stamp
    # it with the earlier closure so pruning does not depend on arrival order.
    closed_at = current.closed_at if current and (released or consumed >= event.quantity) else 0
    work.reservations[event.reservation_id] = Reservation(
        event.reservation_id,
        True,
        intern(event.channel),
        intern(event.location),
        event.quantity,
        consumed,
        released,
        to_us(event.expires_at) if event.expires_at else 0,
        closed_at,
        0 if event.placed_at is UNSET else to_us(event.placed_at),
        to_day(event.promise_date) if event.promise_date else NO_PROMISE,
    )


def _apply_released(work: _Work, event: ReservationReleased, now_us: int) -> None:
    current = work.reservations.get(event.reservation_id) or Reservation(
        event.reservation_id, created=False
    )
    if current.released:
        return
    work.reservations[event.reservation_id] = _released(current, now_us)


def _apply_inbound(work: _Work, event: Inbound, now_us: int) -> None:
    at = to_us(event.occurred_at)
    current = work.inbound.get(event.inbound_id)
    if current is not None and at < current.occurred_at:
        return  # an older update arriving late
    work.inbound[event.inbound_id] = InboundLine(
        event.inbound_id, intern(event.location), event.quantity, to_day(event.eta), at
    )


# Every event type and the function that applies it (``now_us`` stamps closures).
RECENT_KIND: Final[dict[type, int]] = {kind: RECENT_TYPES.index(TAGS[kind]) for kind in TAGS}
_APPLY: Final[dict[type, Callable[[_Work, Any, int], None]]] = {
    BinMovement: _apply_movement,
    BinCount: _apply_count,
    StockSnapshot: _apply_snapshot,
    ReservationCreated: _apply_created,
    ReservationReleased: _apply_released,
    Inbound: _apply_inbound,
}
