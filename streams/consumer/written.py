"""The states this consumer wrote last, so that a sku's next events are folded without
reading it again.

Each kept state is only an assumption: the write that uses it names the server it came from
and what it took as applied, and the store refuses the write when either is wrong (a
conflict on the sku, which is then read). Anything that makes the assumptions doubtful (a
failed write, a rebalance, a changed server) drops them all (``forget``).
"""

from __future__ import annotations

from collections.abc import Mapping

from streams.consumer.folding import Known, Written
from streams.consumer.options import API_EVENT_PREFIXES
from streams.state import SkuState, load_state
from streams.store import Store

# About half a kilobyte each.
WRITTEN_STATES_MAX = 100_000


class WrittenStates:
    def __init__(self, store: Store, limit: int = WRITTEN_STATES_MAX) -> None:
        self.store = store
        self.limit = limit
        # sku -> (version, state) as this process last wrote it to the server ``server``.
        self.states: Written = {}
        self.server = ""  # the store's server id these states were written to; "" = none
        # Counts drops of assumptions: work prepared under an older count is not used.
        self.epoch = 0
        # Skus the sweep wrote since the loop last prepared a batch: that batch is not used
        # if it holds one of them (it was folded on the state before the sweep's).
        self.swept: set[str] = set()

    def known(self, by_sku: dict[str, list[str]], landing: Written) -> Known:
        """The skus' states and versions, the batch's event_ids already applied, those of
        them taken as applied without reading (sku -> ids, for the write to check), and
        those applied by a write that never finished (``Snapshot.unfinished``).

        A sku kept here (or in ``landing``, a write in flight) is not read: its events are
        taken as new, except the API's own reservation events, which the API marked applied
        when it wrote them. The write refuses the batch if either is wrong (or the sku
        changed, or the server did), and the sku is read on the next attempt.
        """
        written = self.states
        if not self.server:
            # Also drops states remembered after ``forget`` (a write that landed while a
            # rebalance waited for it): they belong to no known server.
            written.clear()
            self.server = self.store.server_id()
        skus = list(by_sku)
        missing = [sku for sku in skus if sku not in written and sku not in landing]
        states: dict[str, SkuState] = {}
        versions: dict[str, int] = {}
        seen: set[str] = set()
        unfinished: Mapping[str, Mapping[str, int]] = {}
        if missing:
            snapshot = self.store.read(missing, by_sku)
            states.update(snapshot.states)
            versions.update(snapshot.versions)
            seen.update(snapshot.seen)
            unfinished = snapshot.unfinished
        marked: dict[str, list[str]] = {}
        for sku in skus:
            kept = landing.get(sku) or written.get(sku)
            if kept is None:
                continue
            versions[sku] = kept[0]
            states[sku] = load_state(sku, kept[1])
            ids = [e for e in by_sku[sku] if e.startswith(API_EVENT_PREFIXES)]
            if ids:
                marked[sku] = ids
                seen.update(ids)
        return states, versions, seen, marked, unfinished

    def remember(self, landed: Written) -> None:
        if len(self.states) + len(landed) > self.limit:
            self.states.clear()  # simpler than an LRU, and a full read costs one batch
        self.states.update(landed)

    def conflicted(self, skus: list[str]) -> None:
        """A write found these skus other than assumed: read them next time."""
        if skus:
            for sku in skus:
                self.states.pop(sku, None)
            self.epoch += 1

    def forget(self) -> None:
        """Drop every assumption: the store failed, changed, or partitions changed hands."""
        self.states.clear()
        self.server = ""
        self.epoch += 1
