"""Step two: a batch's events folded into the states of their skus, and the change set that
writes the result (states, projection, dedupe marks, offsets, outbox, ledger rows).

Pure: the states come in (``Known``), the change set goes out. A fold that raises is a
defect; the events that cause it are found (``Unfoldable``) so that they alone are
dead-lettered and the rest of the batch is applied.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from streams import metrics
from streams.backorders import build_replanned
from streams.changeset import ChangeSet
from streams.consumer.batch import Batch, ledger_rows
from streams.consumer.options import offset_field
from streams.events import TAGS, AnyEvent
from streams.fold import FoldResult, fold
from streams.ledger import Ledger
from streams.projector import Projector
from streams.shards import shard_of
from streams.state import SkuState

# A batch's skus as the fold needs them: states, versions, event_ids applied already, those
# taken as applied without reading (sku -> ids, for the write to check), and those applied
# by a write that never finished (streams.store.Snapshot.unfinished).
Known = tuple[
    dict[str, SkuState],
    dict[str, int],
    set[str],
    dict[str, list[str]],
    Mapping[str, Mapping[str, int]],
]
Written = dict[str, tuple[int, bytes]]  # sku -> (version, state) as written


class Unfoldable(Exception):
    """Folding a batch raised an unexpected error; ``culprits`` are the events (by index in
    the batch) that cause it, with the error each raised."""

    def __init__(self, culprits: dict[int, Exception]) -> None:
        super().__init__(f"{len(culprits)} events cannot be folded")
        self.culprits = culprits


@dataclass(frozen=True)
class Folder:
    projector: Projector
    window_us: int  # the dedupe window: how long closed records are kept
    ledger: Ledger | None = None
    shards: int = 1  # the store's (streams/shards.py): a shard's ledger rows go with it

    def fold(
        self,
        events: list[AnyEvent],
        by_sku: dict[str, list[str]],
        offsets: dict[str, int],
        known: Known,
        now: int,
        server: str,
        batch: Batch | None = None,
        room: Sequence[int] | None = None,
    ) -> tuple[FoldResult, ChangeSet]:
        """Fold the events into the known states: the write that applies them (its
        ``assumed_server`` is ``server``; with ``batch``, its ledger rows are staged too;
        ``room``: what each location may still give today, for backorders converted).

        Raises:
            Unfoldable: folding raised an unexpected error, and these events cause it.
        """
        try:
            return self._fold(events, by_sku, offsets, known, now, server, batch, room)
        except Exception as exc:
            culprits = self._culprits(events, offsets, known, now, server)
            if not culprits:
                raise  # not caused by any event alone: a defect to see, not to hide
            raise Unfoldable(culprits) from exc

    def _fold(
        self,
        events: list[AnyEvent],
        by_sku: dict[str, list[str]],
        offsets: dict[str, int],
        known: Known,
        now: int,
        server: str,
        batch: Batch | None,
        room: Sequence[int] | None = None,
    ) -> tuple[FoldResult, ChangeSet]:
        states, versions, seen, marked, unfinished = known
        result = fold(states, events, seen=seen, now_us=now, window_us=self.window_us)
        applied_ids = by_sku  # every event of the batch, unless some were duplicates
        if result.duplicates:
            applied_ids = events_by_sku(result.applied)
        touched = [result.states[sku] for sku in by_sku if sku in result.touched]
        changes, replanned = build_replanned(
            touched, versions, self.projector, now, self.window_us, applied_ids, offsets, room
        )
        result.states.update(replanned.states)
        changes.assumed_server, changes.marked = server, marked
        if self.ledger is not None and batch is not None:
            # Staged with the state and the offsets: see streams/ledger.py.
            kits = frozenset(sku for sku in result.touched if result.states[sku].kit is not None)
            duplicates = _true_duplicates(result.duplicates, unfinished, batch)
            rows = ledger_rows(batch, duplicates, kits)
            if self.shards == 1:
                staged = self.ledger.stage(rows, applied_at_us=now)
                changes.ledger = {0: staged} if staged else {}
            else:
                changes.ledger = self.ledger.stage_by_shard(
                    rows, functools.partial(shard_of, shards=self.shards), applied_at_us=now
                )
        return result, changes

    def _culprits(
        self, events: list[AnyEvent], offsets: dict[str, int], known: Known, now: int, server: str
    ) -> dict[int, Exception]:
        """The events (by index) whose fold raises, with what they raise. Counted and logged
        where they are set aside, once: a batch folded ahead is folded again in its turn.

        Rare (a defect), so simple: a sku's events are folded alone, and a sku that fails
        is folded one more event at a time; an event that fails is left out of the rest.
        """
        indices_of: dict[str, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            indices_of[event.sku].append(index)
        culprits: dict[int, Exception] = {}
        for indices in indices_of.values():
            if self._raises([events[i] for i in indices], offsets, known, now, server) is None:
                continue
            good: list[AnyEvent] = []
            for index in indices:
                error = self._raises([*good, events[index]], offsets, known, now, server)
                if error is None:
                    good.append(events[index])
                else:
                    culprits[index] = error
        return culprits

    def _raises(
        self, events: list[AnyEvent], offsets: dict[str, int], known: Known, now: int, server: str
    ) -> Exception | None:
        try:
            self._fold(events, events_by_sku(events), offsets, known, now, server, None)
        except Exception as exc:
            return exc
        return None


@dataclass(frozen=True)
class Prepared:
    """A batch folded while the previous write was in flight (the loop's ``_prepare``)."""

    batch: Batch
    epoch: int
    now: int
    result: FoldResult
    changes: ChangeSet


def _true_duplicates(
    duplicates: list[AnyEvent], unfinished: Mapping[str, Mapping[str, int]], batch: Batch
) -> list[AnyEvent]:
    """The duplicates but the events a write that never finished applied: of each such
    event_id, its first message here below the offsets that write ended at. The ledger has
    no row for them yet, as that write's rows were to land with its last step."""
    if not unfinished:
        return duplicates
    where = {
        id(event): (offset_field(topic, partition), offset)
        for event, (topic, partition, offset, _, _) in zip(batch.events, batch.sources, strict=True)
    }
    out: list[AnyEvent] = []
    taken: set[str] = set()
    for event in duplicates:
        ends = unfinished.get(event.event_id)
        field, offset = where[id(event)]
        if ends is not None and event.event_id not in taken and offset < ends.get(field, -1):
            taken.add(event.event_id)
        else:
            out.append(event)
    return out


def events_by_sku(events: Iterable[AnyEvent]) -> dict[str, list[str]]:
    """The events' ids per sku, skus in order of first appearance."""
    by_sku: dict[str, list[str]] = defaultdict(list)
    for event in events:
        by_sku[event.sku].append(event.event_id)
    return by_sku


def as_written(changes: ChangeSet) -> Written:
    """The change set's skus as the store holds them once it landed (the write adds 1 to
    the version it checked)."""
    return {
        w.sku: (w.expected_version + 1, w.state)
        for w in changes.skus
        if w.expected_version is not None
    }


def count(events: Iterable[AnyEvent], outcome: str) -> None:
    # One counter update per event type and batch: a labelled inc() per event was a few
    # percent of the consumer's time. Counted by type in C (Counter), then named.
    for kind, n in Counter(map(type, events)).items():
        metrics.EVENTS.labels(TAGS[kind], outcome).inc(n)
