"""The sweep: skus whose projection changes with no event (a reservation's expires_at
passed, or a day change brings inbound into a channel's horizon), and kits whose components
changed, recomputed and written within a second. The store keeps each sku's next such
moment (the due set)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from streams import metrics
from streams.backorders import build_replanned
from streams.changeset import ChangeSet
from streams.consumer.folding import as_written
from streams.consumer.options import Stats
from streams.consumer.outbox import OutboxPublisher
from streams.consumer.written import WrittenStates
from streams.kits import components_of, with_kits
from streams.projector import Projector
from streams.store import Store

DUE_LIMIT: Final = 1000  # skus per read of the due set

Write = Callable[[ChangeSet, int], "list[str] | None"]


class Sweeper:
    def __init__(
        self,
        store: Store,
        projector: Projector,
        written: WrittenStates,
        outbox: OutboxPublisher,
        stats: Stats,
        window_us: int,
        room: Callable[[int], list[int] | None],
    ) -> None:
        """``room``: what each location may still give at a time (contract section 11)."""
        self.window_us = window_us
        self.room = room
        self.store = store
        self.projector = projector
        self.written = written
        self.outbox = outbox
        self.stats = stats
        self._expiry_seen_until = 0  # expiries up to this time (µs) are counted already

    def sweep(self, now_of: Callable[[], int], write: Write, budget_s: float) -> None:
        """Recompute the due skus for up to ``budget_s``; ``write`` is the loop's (None:
        write again, a list: the skus that conflicted)."""
        deadline = time.monotonic() + max(0.05, budget_s)
        now = now_of()
        # Kits computed, or refused by a write of theirs meanwhile, wait for the next sweep,
        # so that a busy component does not hold up the other due skus.
        later: set[str] = set()
        while time.monotonic() < deadline:
            now = now_of()
            # Before the components are read: a write of one after this keeps its kit due.
            kits_due = [k for k in self.store.kits_due(DUE_LIMIT) if k.kit not in later]
            kits_due = kits_due[:DUE_LIMIT]  # counts left out stay, and are read next time
            due = [s for s in self.store.due(now // 1000, limit=DUE_LIMIT) if s not in later]
            due = list(dict.fromkeys([*due, *(k.kit for k in kits_due)]))
            if not due:
                break
            kits = self.store.kits(due)
            due_set = set(due)
            components = [c for c in components_of(kits) if c not in due_set]
            snapshot = self.store.read([*due, *components])
            states = with_kits(
                [snapshot.states[sku] for sku in due],
                kits,
                {c.sku: snapshot.states[c.sku] for kit in kits.values() for c in kit.components},
                self.projector,
                now,
            )
            changes, _ = build_replanned(
                states, snapshot.versions, self.projector, now, self.window_us, room=self.room(now)
            )
            conflicts = write(changes, now)
            if conflicts is None:
                continue
            self.written.conflicted(conflicts)
            if conflicts:
                later.update(sku for sku in conflicts if sku in kits)
                continue
            self.store.kits_computed(kits_due)
            later.update(kit.kit for kit in kits_due)
            self.written.remember(as_written(changes))
            self.written.swept.update(w.sku for w in changes.skus)
            self.stats.swept += len(due)
            metrics.SWEPT.inc(len(due))
            metrics.EXPIRED.inc(
                sum(
                    1
                    for state in states
                    for r in state.reservations
                    if r.created
                    and not r.released
                    and self._expiry_seen_until < r.expires_at <= now
                )
            )
            # Due skus are any consumer's, not only its partitions': check once published.
            self.outbox.add(changes.outbox_id, changes.outbox, check=True)
        self._expiry_seen_until = max(self._expiry_seen_until, now)
