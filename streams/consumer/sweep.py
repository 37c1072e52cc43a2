"""The sweep: skus whose projection changes with no event (a reservation's expires_at
passed, or a day change brings inbound into a channel's horizon), recomputed and written
within a second. The store keeps each sku's next such moment (the due set)."""

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
    ) -> None:
        self.window_us = window_us
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
        while time.monotonic() < deadline:
            now = now_of()
            due = self.store.due(now // 1000, limit=DUE_LIMIT)
            if not due:
                break
            snapshot = self.store.read(due)
            states = [snapshot.states[sku] for sku in due]
            changes, _ = build_replanned(
                states, snapshot.versions, self.projector, now, self.window_us
            )
            conflicts = write(changes, now)
            if conflicts is None:
                continue
            self.written.conflicted(conflicts)
            if conflicts:
                continue
            self.written.remember(as_written(changes))
            self.written.epoch += 1  # a batch folded before this sweep would only conflict
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
