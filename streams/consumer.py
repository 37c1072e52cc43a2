"""The stream consumer: decode -> dead-letter -> fold -> atomic Redis write -> publish -> commit.

Delivery is at least once; exactly-once effect comes from two things written atomically with
the state in Redis: the consumed offsets (the consumer seeks to them on every assignment)
and the applied event_ids (a replayed event is a no-op). Kafka's own committed offsets are
only a hint for tools; Redis is the position that counts.

Crash points and what happens on restart:
- before the Redis write: the batch is consumed again from the offsets in Redis;
- after the Redis write, before publishing: the availability events wait in the Redis
  outbox and are published by the next instance;
- after publishing, before the Kafka commit: offsets come from Redis, nothing is redone.

While a batch's write is in flight the next batch is consumed, decoded and folded on top of
the states being written (``_prepare``); that work is used only if the write lands. A crash
or a stop drops only that read-ahead from memory, and it is consumed again from the offsets
in Redis. A rebalance waits for the write before the partitions change hands; if the write
did not land, the batch is abandoned (``BatchAbandoned``) and delivered again from the
offsets in Redis. A read-ahead that fails to consume or decode stops the loop
(``ReadAheadFailed``).

The skus this process wrote last are folded from what it wrote, not read again
(``_known``); the write script checks what that assumes, and a wrong assumption is a
conflict (read, fold again). When the Redis server changed (restart or failover, seen by its
run_id), the partitions are consumed again from the offsets that server holds (``_resync``).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from streams import metrics
from streams.changeset import ChangeSet, build_changeset, decode_outbox
from streams.events import TAGS, AnyEvent, InvalidEvent, decode
from streams.fold import FoldResult, fold
from streams.kafka import Outgoing, ReliableProducer
from streams.ledger import Ledger, LedgerColumns, Source, parse_staged_field
from streams.logs import HEADER as CORRELATION_HEADER
from streams.logs import correlation_id, new_correlation_id
from streams.projector import Projector
from streams.snapshot import SnapshotBook, encode_snapshot
from streams.state import SkuState, load_state, to_us
from streams.store import ProjectionMissing, ServerReplaced, Store

log = logging.getLogger(__name__)

OFFSET_FIELD_SEPARATOR = "\x1f"
VISIBLE_SAMPLE = 500
LEDGER_FLUSH_INTERVAL_S = 1.0
COLLECT_INTERVAL_S = 10.0
# Skus whose state the consumer keeps as it wrote them last (about half a kilobyte each), to
# fold the next events of a sku without reading it again.
WRITTEN_STATES_MAX = 100_000
T = TypeVar("T")
Written = dict[str, tuple[int, bytes]]  # sku -> (version, state) as written


def offset_field(topic: str, partition: int) -> str:
    return f"{topic}{OFFSET_FIELD_SEPARATOR}{partition}"


@dataclass(frozen=True)
class ConsumerOptions:
    topics: tuple[str, ...]
    dead_letter_topic: str
    availability_topic: str
    known_channels: frozenset[str]
    batch_size: int
    batch_timeout_s: float
    sweep_interval_s: float
    window_us: int
    max_message_bytes: int
    alive_file: str | None = None


@dataclass
class Stats:
    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    conflicts: int = 0
    prepared: int = 0  # batches folded while the previous write was in flight, and used
    swept: int = 0
    published: int = 0


@dataclass
class Batch:
    events: list[AnyEvent]
    sources: list[Source]  # parallel to events
    dead: list[Outgoing]
    dead_sources: list[tuple[Source, str]]
    offsets: dict[str, int]
    # The consumer's rebalance count when these messages were consumed (see ``apply``).
    generation: int = 0


# A batch's skus as the fold needs them: states, versions, event_ids applied already, and
# those taken as applied without reading (sku -> ids, for the write to check).
Known = tuple[dict[str, SkuState], dict[str, int], set[str], dict[str, list[str]]]


@dataclass(frozen=True)
class Prepared:
    """A batch folded while the previous write was in flight (``StreamProjector._prepare``)."""

    batch: Batch
    epoch: int
    now: int
    result: FoldResult
    changes: ChangeSet


class ReadAheadFailed(Exception):
    """Consuming or decoding the next batch failed while a write was in flight.

    Not retried in place (the messages consumed so far are not held anywhere): the loop
    stops, and a restart consumes them again from the offsets in Redis.
    """


class Unfoldable(Exception):
    """Folding a batch raised an unexpected error; ``culprits`` are the events (by index in
    the batch) that cause it, with the reason each is dead-lettered with."""

    def __init__(self, culprits: dict[int, str]) -> None:
        super().__init__(f"{len(culprits)} events cannot be folded")
        self.culprits = culprits


class BatchAbandoned(Exception):
    """The partitions changed hands after the batch was consumed and before its write
    landed: the new assignment starts from the offsets in Redis, so the batch's messages
    are delivered again (to us or to their new owner) and must not be applied from here."""


class LedgerAhead(Exception):
    """The ledger holds a partition that Redis has no offsets for: Redis lost its data.

    Operator action: stop the consumers and run `atp rebuild`, which restores the projection
    and the offsets from the ledger; then start the consumers again.
    """


API_EVENT_PREFIXES = ("atp-alloc:", "atp-release:")


def now_us() -> int:
    return time.time_ns() // 1000


def ledger_rows(batch: Batch, duplicates: list[AnyEvent]) -> LedgerColumns:
    """A row for every message of the batch, so each partition's offsets are contiguous.

    Status: applied; applied_by_api (the API's own reservation events, applied in Redis when
    the API made them); duplicate (already applied, ignored); dead_letter (with the reason).
    """
    events = batch.events
    dead = [None] * len(batch.dead_sources)
    # Column by column, each a plain comprehension with no function call per event: this
    # runs for every message of every batch.
    status = [
        "applied_by_api" if e.event_id.startswith(API_EVENT_PREFIXES) else "applied" for e in events
    ]
    if duplicates:
        repeated = {id(e) for e in duplicates}
        status = [
            "duplicate" if s == "applied" and id(e) in repeated else s
            for e, s in zip(events, status, strict=True)
        ]
    return LedgerColumns(
        sources=batch.sources + [source for source, _ in batch.dead_sources],
        event_id=[e.event_id for e in events] + dead,
        type=[TAGS[type(e)] for e in events] + dead,
        sku=[e.sku for e in events] + dead,
        location=[getattr(e, "location", None) for e in events] + dead,
        channel=[getattr(e, "channel", None) for e in events] + dead,
        quantity=[getattr(e, "quantity", None) for e in events] + dead,
        occurred_at_us=[to_us(e.occurred_at) for e in events] + dead,
        status=status + ["dead_letter"] * len(dead),
        reason=[None] * len(events) + [reason for _, reason in batch.dead_sources],
    )


def _correlation_header(headers: list[tuple[str, str | bytes | None]]) -> str | None:
    for key, value in headers:
        if key == CORRELATION_HEADER and value:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            return text[:128] if text.isprintable() else None
    return None


def _unexpected(step: str, exc: BaseException) -> str:
    metrics.UNEXPECTED.labels(step).inc()
    log.error(
        "unexpected %s in %s; the message is dead-lettered", type(exc).__name__, step, exc_info=exc
    )
    return f"internal error in {step}: {type(exc).__name__}"


def _log_dead_letter(topic: str, partition: int, offset: int, reason: str, cid: str) -> None:
    token = correlation_id.set(cid)
    log.warning(
        "dead-lettered %s[%d]@%d: %s", topic, partition, offset, reason,
        extra={"source_topic": topic, "source_partition": partition, "source_offset": offset},
    )  # fmt: skip
    correlation_id.reset(token)


def _as_written(changes: ChangeSet) -> Written:
    """What ``_written`` holds of the change set's skus once it landed (the script adds 1
    to the version it checked)."""
    return {
        w.sku: (w.expected_version + 1, w.state)
        for w in changes.skus
        if w.expected_version is not None
    }


def _by_sku(events: Iterable[AnyEvent]) -> dict[str, list[str]]:
    by_sku: dict[str, list[str]] = defaultdict(list)
    for event in events:
        by_sku[event.sku].append(event.event_id)
    return by_sku


def _count(events: Iterable[AnyEvent], outcome: str) -> None:
    # One counter update per event type and batch: a labelled inc() per event was a few
    # percent of the consumer's time. Counted by type in C (Counter), then named.
    for kind, n in Counter(map(type, events)).items():
        metrics.EVENTS.labels(TAGS[kind], outcome).inc(n)


def _position(message: Message) -> tuple[str, int, int]:
    # A message without an error always has all three; librdkafka types them optional.
    return str(message.topic()), int(message.partition() or 0), int(message.offset() or 0)


class StreamProjector:
    """Runs the loop until ``stop`` is set; then finishes its batch, commits and returns."""

    def __init__(
        self,
        consumer: Consumer,
        producer: ReliableProducer,
        store: Store,
        projector: Projector,
        options: ConsumerOptions,
        clock: Callable[[], int] = now_us,
        ledger: Ledger | None = None,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.projector = projector
        self.options = options
        self.clock = clock
        self.ledger = ledger
        self.stats = Stats()
        self._last_sweep = 0.0
        self._last_alive = 0.0
        self._last_lag = 0.0
        self._last_snapshot = 0.0
        # Availability events by outbox entry (one per write): written to Redis, not yet
        # handed to the producer; then deliveries outstanding per entry.
        self._pending_outbox: dict[str, dict[str, bytes]] = {}
        self._in_flight: dict[str, list[int]] = {}  # outbox id -> [outstanding, events]
        self._failed: set[str] = set()
        self._initialized = False
        self._expiry_seen_until = 0  # expiries up to this time (µs) are counted already
        self._acked: list[tuple[str, int]] = []  # (outbox id, events) the broker has, all
        self._owned: frozenset[tuple[str, int]] = frozenset()  # partitions assigned to us
        self.book = SnapshotBook(instance=f"{socket.gethostname()}:{os.getpid()}")
        # The batch's Redis write runs on this thread so the loop can consume, decode and fold
        # the next batch meanwhile (``_read_ahead``); one thread, so writes stay in order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-write")
        self._writing: Future[list[str]] | None = None
        # Messages consumed (and, once decoded, their batch) during the last write.
        self._ahead: tuple[list[Message], Batch] | None = None
        self._rebalances = 0  # assignments and revocations seen, to spot stale batches
        # sku -> (version, state) as this process last wrote it to the server ``_server``
        # (its run_id). A batch folds these skus without reading them; its write checks
        # what that assumes (``_known``), and anything else found is a conflict on the sku.
        self._written: Written = {}
        self._server = ""
        # Assumptions dropped so far: work prepared under an older count is not used.
        self._epoch = 0
        # While a write is in flight, what it writes (as ``_written`` will hold it if it
        # lands), and the next batch folded on top of that meanwhile (``_prepare``).
        self._landing: Written = {}
        self._prepared: Prepared | None = None

    # -- the loop ---------------------------------------------------------------------

    def ensure_initialized(self, wrote: bool = False) -> None:
        """Mark an empty Redis as ours to fill, unless it lost its data: the ledger has
        files, or (``wrote``) this consumer wrote to it already (its staged ledger rows may
        not have reached a file yet)."""
        marker = self.store.marker()
        if marker == "rebuilding":
            raise LedgerAhead("an `atp rebuild` did not finish; run it again before consuming")
        if marker is not None:
            return
        if self.ledger is not None and (wrote or self.ledger.files()):
            raise LedgerAhead(
                "Redis holds no projection but events were applied to it before (ledger files, "
                "or this consumer's own writes): Redis lost its data; stop the consumers and "
                "run `atp rebuild`"
            )
        self.store.mark_initialized("consumer")

    def run(self, stop: threading.Event) -> None:
        self._retrying(self.ensure_initialized, stop)
        self.consumer.subscribe(
            list(self.options.topics), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        flushing = threading.Event()
        flusher = threading.Thread(
            target=self._flush_loop, args=(flushing,), name="ledger-flush", daemon=True
        )
        flusher.start()
        # The loop's objects die by reference count, but the cyclic collector runs each time
        # ~700 new containers outlive their statement and walks all of them: a large batch
        # (and the next one, read ahead) triggered it thousands of times, about a sixth of
        # the CPU per event (benchmarks/fold.py). Off while the loop runs, with a full
        # collection every COLLECT_INTERVAL_S for the rare cycle.
        collecting = gc.isenabled()
        gc.disable()
        last_collect = time.monotonic()
        try:
            while not stop.is_set():
                if time.monotonic() - last_collect >= COLLECT_INTERVAL_S:
                    gc.collect()
                    last_collect = time.monotonic()
                batch: Batch | None
                if self._ahead is not None:
                    (messages, batch), self._ahead = self._ahead, None
                else:
                    messages, generation = self._next_batch()
                    batch = self.decode(messages, generation) if messages else None
                if messages:
                    self._retrying(partial(self.process, messages, batch, read_ahead=True), stop)
                if time.monotonic() - self._last_sweep >= self.options.sweep_interval_s:
                    self._retrying(self.sweep, stop)
                    self._last_sweep = time.monotonic()
                self._touch_alive()
                self._write_snapshot()
        finally:
            flushing.set()
            flusher.join()
            try:
                self.flush_ledger()
            except self.store.transient_errors as exc:  # the rows stay staged in Redis
                log.warning("could not move the staged ledger rows to files on shutdown: %s", exc)
            self._writer.shutdown(wait=True)
            self.consumer.close()
            if collecting:
                gc.enable()

    def flush_ledger(self) -> int:
        """Move the staged ledger rows of the partitions this instance owns into files."""
        if self.ledger is None:
            return 0
        owned = self._owned
        staged = {
            name: rows
            for name, rows in self.store.staged_ledger().items()
            if parse_staged_field(name)[:2] in owned
        }
        if not staged:
            return 0
        done = self.ledger.flush(staged)
        self.store.drop_staged_ledger(done)
        return len(done)

    def _flush_loop(self, stopping: threading.Event) -> None:
        # In its own thread: the files are written while the loop goes on with batches.
        while not stopping.wait(LEDGER_FLUSH_INTERVAL_S):
            try:
                self.flush_ledger()
            except Exception as exc:  # the rows stay staged; the next round tries again
                log.warning("ledger flush failed (%s); retrying", exc)

    def _next_batch(self) -> tuple[list[Message], int]:
        """Wait briefly for the first messages, then take what librdkafka already fetched.

        A short first wait keeps latency low when the stream is quiet; draining the local
        queue without waiting makes batches large (and per-sku writes coalesced) under load.
        """
        limit = self.options.batch_size
        messages = self.consumer.consume(num_messages=limit, timeout=self.options.batch_timeout_s)
        generation = self._rebalances
        # Bounded in time too: a steady stream refills the local queue as fast as we drain it.
        deadline = time.monotonic() + self.options.batch_timeout_s
        while messages and len(messages) < limit and time.monotonic() < deadline:
            more = self.consumer.consume(num_messages=limit - len(messages), timeout=0)
            if self._rebalances != generation:
                # Partitions changed hands inside that call and were sought to the offsets in
                # Redis: what came before it is delivered again from there.
                messages, generation = [], self._rebalances
            if not more:
                break
            messages.extend(more)
        return messages, generation

    def process(
        self, messages: list[Message], batch: Batch | None = None, read_ahead: bool = False
    ) -> None:
        """Apply one consumed batch (``batch``: its messages decoded already), publish its
        availability events and commit it. With ``read_ahead`` the next batch is consumed and
        decoded while this one's Redis write is in flight, and kept for the loop."""
        try:
            self._process(messages, batch or self.decode(messages), read_ahead)
        except BatchAbandoned:
            log.info(
                "partitions changed hands before a batch of %d messages was written; "
                "it is consumed again from the offsets in Redis",
                len(messages),
            )

    def _process(self, messages: list[Message], batch: Batch, read_ahead: bool) -> None:
        started = time.perf_counter()
        if batch.generation != self._rebalances:
            raise BatchAbandoned  # before its dead letters: they come again with the batch
        if batch.dead:
            # Dead letters are delivered before the offsets move past them in Redis.
            self.producer.send_all(batch.dead)
            self.stats.dead_lettered += len(batch.dead)
        try:
            self.apply(batch.events, batch.offsets, batch, self._read_ahead if read_ahead else None)
        except Unfoldable as exc:
            self.producer.send_all(self._set_aside(messages, batch, exc.culprits))
            self.stats.dead_lettered += len(exc.culprits)
            self.apply(batch.events, batch.offsets, batch)
        metrics.FOLD_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(messages))
        visible = time.time()
        # A sample of at most VISIBLE_SAMPLE messages, spread over the batch: a histogram
        # observation per message of a 100k batch would cost more than it tells.
        for message in messages[:: -(-len(messages) // VISIBLE_SAMPLE)]:
            kind, stamp = message.timestamp()
            if kind and stamp > 0:
                metrics.VISIBLE_SECONDS.observe(max(0.0, visible - stamp / 1000))
                self.book.visible(max(0.0, visible - stamp / 1000))
        for _, reason in batch.dead_sources:
            self.book.dead_letter(reason)
        if batch.dead_sources:
            metrics.EVENTS.labels("invalid", "dead_letter").inc(len(batch.dead_sources))
        _count(batch.events, "consumed")
        self.publish_outbox()
        self._commit(batch.offsets)
        self.stats.batches += 1
        self._record_lag(batch.offsets)

    def decode(self, messages: Iterable[Message], generation: int | None = None) -> Batch:
        events: list[AnyEvent] = []
        sources: list[Source] = []
        dead: list[Outgoing] = []
        dead_sources: list[tuple[Source, str]] = []
        next_offsets: dict[tuple[str, int], int] = {}
        limit = self.options.max_message_bytes
        known = self.options.known_channels
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", error)
                continue
            # Inline, not _position(): this loop runs per message, and calls add up. Without
            # an error all three are set (librdkafka types them optional).
            topic: str = message.topic()  # type: ignore[assignment]
            partition: int = message.partition()  # type: ignore[assignment]
            offset: int = message.offset()  # type: ignore[assignment]
            next_offsets[topic, partition] = offset + 1
            value = message.value() or b""
            headers: list[tuple[str, str | bytes | None]] | None = message.headers()  # type: ignore[assignment]
            given = _correlation_header(headers) if headers else None
            try:
                if len(value) > limit:
                    raise InvalidEvent(
                        f"message of {len(value)} bytes exceeds the limit of {limit} bytes"
                    )
                event = decode(value, known)
            except InvalidEvent as exc:
                reason = exc.reason
            except Exception as exc:
                # A defect of ours, not bad input; still, one message must never stop the loop.
                reason = _unexpected("decode", exc)
            else:
                events.append(event)
                sources.append((topic, partition, offset, value, given or event.correlation_id))
                continue
            cid = given or new_correlation_id()
            dead.append(self._dead_letter(message, reason, cid))
            dead_sources.append(((topic, partition, offset, value, cid), reason))
            _log_dead_letter(topic, partition, offset, reason, cid)
        self.stats.consumed += len(sources) + len(dead_sources)
        offsets = {
            offset_field(topic, partition): n for (topic, partition), n in next_offsets.items()
        }
        generation = self._rebalances if generation is None else generation
        return Batch(events, sources, dead, dead_sources, offsets, generation)

    def apply(
        self,
        events: list[AnyEvent],
        offsets: dict[str, int],
        batch: Batch | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """Fold the events into Redis, retrying from a fresh read if the API wrote meanwhile.

        ``meanwhile`` runs while the write is in flight (it must not touch these skus).
        """
        if not self._initialized:
            # Before the ledger is written: its files are what tell a lost Redis apart.
            self.ensure_initialized()
            self._initialized = True
        by_sku = _by_sku(events)
        prepared, self._prepared = self._prepared, None
        if prepared is not None and (prepared.batch is not batch or prepared.epoch != self._epoch):
            prepared = None  # prepared for another batch, or on assumptions dropped since
        while True:
            if batch is not None and batch.generation != self._rebalances:
                # Before every attempt, also a retry after a failed or conflicting write.
                raise BatchAbandoned
            if prepared is not None:
                now, result, changes = prepared.now, prepared.result, prepared.changes
                prepared = None
                self.stats.prepared += 1
            else:
                now = self.clock()
                result, changes = self._fold(
                    events, by_sku, offsets, batch, now, self._known(by_sku, {})
                )
            landing = self._landing = _as_written(changes)
            try:
                conflicts = self._write(changes, now, meanwhile)
            finally:
                self._landing = {}
            meanwhile = None
            if conflicts is None:
                continue
            if not conflicts:
                self._remember(landing)
                if changes.outbox:
                    self._pending_outbox[changes.outbox_id] = changes.outbox
                break
            self._conflicted(conflicts)
            self.stats.conflicts += 1
            metrics.CONFLICTS.inc()
        self.stats.applied += len(result.applied)
        self.stats.duplicates += len(result.duplicates)
        _count(result.applied, "applied")
        _count(result.duplicates, "duplicate")

    def _fold(
        self,
        events: list[AnyEvent],
        by_sku: dict[str, list[str]],
        offsets: dict[str, int],
        batch: Batch | None,
        now: int,
        known: Known,
    ) -> tuple[FoldResult, ChangeSet]:
        """Fold the events into the known states: the write that applies them.

        Raises:
            Unfoldable: folding raised an unexpected error, and these events cause it.
        """
        try:
            return self._fold_unguarded(events, by_sku, offsets, batch, now, known)
        except Exception as exc:
            culprits = self._culprits(events, offsets, now, known)
            if not culprits:
                raise  # not caused by any event alone: a defect to see, not to hide
            raise Unfoldable(culprits) from exc

    def _culprits(
        self, events: list[AnyEvent], offsets: dict[str, int], now: int, known: Known
    ) -> dict[int, str]:
        """The events (by index) whose fold raises, with the reason to dead-letter them.

        Rare (a defect), so simple: a sku's events are folded alone, and a sku that fails
        is folded one more event at a time; an event that fails is left out of the rest.
        """
        by_sku: dict[str, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            by_sku[event.sku].append(index)
        culprits: dict[int, str] = {}
        for indices in by_sku.values():
            if self._folds([events[i] for i in indices], offsets, now, known) is None:
                continue
            good: list[AnyEvent] = []
            for index in indices:
                error = self._folds([*good, events[index]], offsets, now, known)
                if error is None:
                    good.append(events[index])
                else:
                    culprits[index] = _unexpected("fold", error)
        return culprits

    def _folds(
        self, events: list[AnyEvent], offsets: dict[str, int], now: int, known: Known
    ) -> Exception | None:
        try:
            self._fold_unguarded(events, _by_sku(events), offsets, None, now, known)
        except Exception as exc:
            return exc
        return None

    def _fold_unguarded(
        self,
        events: list[AnyEvent],
        by_sku: dict[str, list[str]],
        offsets: dict[str, int],
        batch: Batch | None,
        now: int,
        known: Known,
    ) -> tuple[FoldResult, ChangeSet]:
        states, versions, seen, marked = known
        result = fold(states, events, seen=seen, now_us=now, window_us=self.options.window_us)
        applied_ids = by_sku  # every event of the batch, unless some were duplicates
        if result.duplicates:
            applied_ids = _by_sku(result.applied)
        touched = [result.states[sku] for sku in by_sku if sku in result.touched]
        changes = build_changeset(
            touched, versions, self.projector, now, seen=applied_ids, offsets=offsets
        )
        changes.assumed_server, changes.marked = self._server, marked
        if self.ledger is not None and batch is not None:
            # Staged with the state and the offsets: see streams/ledger.py.
            changes.ledger = self.ledger.stage(
                ledger_rows(batch, result.duplicates), applied_at_us=now
            )
        return result, changes

    def _set_aside(
        self, messages: list[Message], batch: Batch, culprits: dict[int, str]
    ) -> list[Outgoing]:
        """Move the events that cannot be folded from the batch to its dead letters."""
        by_position = {_position(m): m for m in messages}
        dead: list[Outgoing] = []
        for index in sorted(culprits):
            reason = culprits[index]
            topic, partition, offset, value, given = batch.sources[index]
            cid = given or new_correlation_id()
            dead.append(self._dead_letter(by_position[topic, partition, offset], reason, cid))
            batch.dead_sources.append(((topic, partition, offset, value, cid), reason))
            _log_dead_letter(topic, partition, offset, reason, cid)
        keep = [i for i in range(len(batch.events)) if i not in culprits]
        batch.events[:] = [batch.events[i] for i in keep]
        batch.sources[:] = [batch.sources[i] for i in keep]
        batch.dead.extend(dead)
        return dead

    def _prepare(self, batch: Batch) -> Prepared | None:
        """Fold the batch read ahead while the current write is in flight, on the states
        that write is writing (skus it does not write are read: it cannot change them).
        Used only if that write lands and nothing was dropped meanwhile (``_epoch``); its
        own write checks the rest like any other."""
        if not batch.events or not self._server or batch.generation != self._rebalances:
            return None
        by_sku = _by_sku(batch.events)
        landing = self._landing
        now = self.clock()
        epoch = self._epoch
        result, changes = self._fold(
            batch.events, by_sku, batch.offsets, batch, now, self._known(by_sku, landing)
        )
        return Prepared(batch, epoch, now, result, changes)

    def _known(self, by_sku: dict[str, list[str]], landing: Written) -> Known:
        """The skus' states and versions, the batch's event_ids already applied, and those
        of them taken as applied without reading (sku -> ids, for the write to check).

        A sku this process wrote last comes from ``_written``, not from Redis: its events
        are taken as new, except the API's own reservation events, which the API marked
        applied when it wrote them. The write refuses the batch if either is wrong (or the
        sku changed, or the server did), and the sku is read on the next attempt.
        """
        written = self._written
        if not self._server:
            # Also drops states remembered after ``_forget`` (a write that landed while a
            # rebalance waited for it): they belong to no known server.
            written.clear()
            self._server = self.store.server_id()
        skus = list(by_sku)
        missing = [sku for sku in skus if sku not in written and sku not in landing]
        states: dict[str, SkuState] = {}
        versions: dict[str, int] = {}
        seen: set[str] = set()
        if missing:
            snapshot = self.store.read(missing, by_sku)
            states.update(snapshot.states)
            versions.update(snapshot.versions)
            seen.update(snapshot.seen)
        marked: dict[str, list[str]] = {}
        for sku in skus:
            known = landing.get(sku) or written.get(sku)
            if known is None:
                continue
            versions[sku] = known[0]
            states[sku] = load_state(sku, known[1])
            ids = [e for e in by_sku[sku] if e.startswith(API_EVENT_PREFIXES)]
            if ids:
                marked[sku] = ids
                seen.update(ids)
        return states, versions, seen, marked

    def _remember(self, landed: Written) -> None:
        written = self._written
        if len(written) + len(landed) > WRITTEN_STATES_MAX:
            written.clear()  # simpler than an LRU, and a full read costs one batch
        written.update(landed)

    def _conflicted(self, skus: list[str]) -> None:
        """A write found these skus other than assumed: read them next time."""
        if skus:
            for sku in skus:
                self._written.pop(sku, None)
            self._epoch += 1

    def _forget(self) -> None:
        """Drop every assumption: Redis failed, changed, or partitions changed hands."""
        self._written.clear()
        self._server = ""
        self._epoch += 1

    def _write(
        self, changes: ChangeSet, now_us: int, meanwhile: Callable[[], None] | None = None
    ) -> list[str] | None:
        """The write's conflicting skus, or None when it must be prepared again: Redis had
        lost its data, or its server is not the one the write's assumptions came from.

        Never fold onto an empty Redis: with a ledger that means stopping for `atp rebuild`
        (LedgerAhead); without one, starting afresh.
        """
        try:
            return self._write_once(changes, now_us, meanwhile)
        except ServerReplaced:
            self._resync()
            return None
        except BaseException:
            self._forget()  # the write may have landed, or Redis restarted: read again
            raise

    def _write_once(
        self, changes: ChangeSet, now_us: int, meanwhile: Callable[[], None] | None
    ) -> list[str] | None:
        try:
            if meanwhile is None:
                return self.store.write(changes, now_us // 1000)
            self._writing = self._writer.submit(self.store.write, changes, now_us // 1000)
            failed: Exception | None = None
            try:
                meanwhile()
            except Exception as exc:
                failed = exc
            # Nothing moves on while the write is in flight, whatever ``meanwhile`` did.
            writing, self._writing = self._writing, None
            try:
                conflicts = writing.result()
            finally:
                if failed is not None:
                    raise ReadAheadFailed(f"reading the next batch failed: {failed!r}") from failed
            return conflicts
        except ProjectionMissing:
            self._forget()
            self.ensure_initialized(wrote=True)
            return None

    def _read_ahead(self) -> None:
        """Consume, decode and fold (``_prepare``) the next batch while this one is written:
        the wait for Redis was a quarter of the loop's time, and then more."""
        if self._ahead is not None:
            return
        messages, generation = self._next_batch()
        if messages:
            batch = self.decode(messages, generation)
            self._ahead = (messages, batch)
            try:
                self._prepared = self._prepare(batch)
            except self.store.transient_errors as exc:  # its own turn reads, and retries
                log.info("could not fold the next batch ahead (%s)", exc)
            except Unfoldable:
                pass  # its own turn folds it again, and sets the culprits aside

    def _settle_write(self) -> None:
        """Wait for a write in flight: called by the rebalance callbacks, which librdkafka
        may run inside the read-ahead's consume. Partitions are handed over, and stored
        offsets read, only once the write settled; a write that did not land (it failed, or
        conflicted with the API) leaves its batch to be abandoned (``BatchAbandoned``)."""
        self._rebalances += 1
        self._ahead = None  # consumed under the old assignment: delivered again
        self._forget()
        writing = self._writing
        if writing is not None:
            try:
                writing.result()
            except Exception:  # the loop sees the same error, and retries
                pass

    def sweep(self) -> None:
        """Recompute skus whose projection changes with no event: expiries, day changes."""
        deadline = time.monotonic() + max(0.05, self.options.sweep_interval_s)
        now = self.clock()
        while time.monotonic() < deadline:
            now = self.clock()
            due = self.store.due(now // 1000, limit=1000)
            if not due:
                break
            snapshot = self.store.read(due)
            states = [snapshot.states[sku] for sku in due]
            changes = build_changeset(states, snapshot.versions, self.projector, now)
            conflicts = self._write(changes, now)
            if conflicts is None:
                continue
            self._conflicted(conflicts)
            if not conflicts:
                self._remember(_as_written(changes))
                self._epoch += 1  # a batch folded before this sweep would only conflict
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
                if changes.outbox:
                    self._pending_outbox[changes.outbox_id] = changes.outbox
        self._expiry_seen_until = max(self._expiry_seen_until, now)
        self.publish_outbox(from_redis=True)

    def publish_outbox(self, from_redis: bool = False) -> None:
        """Hand the waiting availability events to the producer; remove a write's outbox
        entry from Redis once the broker acknowledged all its events (``_ack_delivered``).

        After a batch, what this process just wrote is published from memory; the sweep
        also reads the Redis outbox, which holds anything a crashed instance or the API left
        (oldest first). The loop does not wait for the acknowledgements: until they arrive
        the entry stays in Redis, so a crash or a failed delivery means it is published again.
        """
        self._ack_delivered()
        pending: dict[str, dict[str, bytes]] = {}
        if from_redis:
            done = {outbox_id for outbox_id, _ in self._acked}
            for outbox_id, blob in self.store.outbox(limit=200).items():
                if outbox_id not in self._in_flight and outbox_id not in done:
                    pending[outbox_id] = dict(decode_outbox(blob))
        pending.update(self._pending_outbox)
        self._pending_outbox = {}
        producer = self.producer.producer
        topic = self.options.availability_topic
        for outbox_id, events in pending.items():
            if outbox_id in self._in_flight:
                continue
            if not events:
                self._acked.append((outbox_id, 0))
                continue
            self._in_flight[outbox_id] = [len(events), len(events)]
            on_delivery = partial(self._delivered, outbox_id)
            for name, value in events.items():
                key = name.split("\x1f", 1)[1].encode()
                while True:
                    try:
                        producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.05)

    def _delivered(self, outbox_id: str, err: KafkaError | None, _msg: Message) -> None:
        if err is not None and outbox_id not in self._failed:
            self._failed.add(outbox_id)
            log.warning(
                "availability events of write %s not delivered (%s); they stay in the outbox",
                outbox_id,
                err,
            )
        counts = self._in_flight[outbox_id]
        counts[0] -= 1
        if counts[0]:
            return
        del self._in_flight[outbox_id]
        if outbox_id in self._failed:
            self._failed.discard(outbox_id)  # still in Redis: the sweep publishes it again
        else:
            self._acked.append((outbox_id, counts[1]))

    def finish(self, timeout_s: float = 10.0) -> None:
        """On shutdown: wait for outstanding deliveries and clear what was acknowledged."""
        self.producer.producer.flush(timeout_s)
        try:
            self._ack_delivered()
        except (
            self.store.transient_errors
        ) as exc:  # the entries stay in the outbox: published again
            log.warning("could not clear the outbox on shutdown: %s", exc)

    def _ack_delivered(self) -> None:
        self.producer.producer.poll(0)
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        self.store.ack_outbox([outbox_id for outbox_id, _ in acked])
        published = sum(n for _, n in acked)
        self.stats.published += published
        metrics.PUBLISHED.inc(published)

    # -- Kafka plumbing -----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Seek every assigned partition to the offset stored with the state in Redis."""
        self._settle_write()
        self._stored_positions(partitions)
        log.info("assigned %s", [(tp.topic, tp.partition, tp.offset) for tp in partitions])
        self._owned = frozenset((tp.topic, tp.partition) for tp in partitions)
        consumer.assign(partitions)

    def _resync(self) -> None:
        """The Redis server changed (a restart, or a replica took over): it may hold older
        data than this process wrote, and so older offsets. Consume again from those, as
        after a rebalance; the dedupe marks skip what it does hold."""
        self._settle_write()  # the batch in hand is abandoned, as in a rebalance
        partitions = self.consumer.assignment()
        self._stored_positions(partitions)
        for tp in partitions:
            self.consumer.seek(tp)
        log.warning("the Redis server changed (restart or failover): consuming again from %s",
                    [(tp.topic, tp.partition, tp.offset) for tp in partitions])  # fmt: skip

    def _stored_positions(self, partitions: list[TopicPartition]) -> None:
        """Set each partition's offset to the one stored with the state in Redis."""
        # Initialized first: the stored offsets of an emptied Redis must not be trusted.
        self._retrying_plain(self.ensure_initialized)
        stored = self._retrying_plain(self.store.offsets)
        for tp in partitions:
            position = stored.get(offset_field(tp.topic, tp.partition))
            if self.ledger is not None:
                # Redis is initialized (checked above), so files at or past the stored offset
                # (all of them when none is stored) come from batches that never reached it.
                removed = self.ledger.reconcile(tp.topic, tp.partition, position)
                if removed:
                    log.info(
                        "ledger: removed %d file(s) of %s[%d] past offset %s (batch never reached Redis)",
                        removed,
                        tp.topic,
                        tp.partition,
                        position,
                    )
            tp.offset = OFFSET_BEGINNING if position is None else position

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle_write()
        # Their staged ledger rows are the next owner's to move to files from now on.
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._owned = frozenset(self._owned - gone)

    def _record_lag(self, offsets: dict[str, int]) -> None:
        now = time.monotonic()
        if now - self._last_lag < 2.0:
            return
        self._last_lag = now
        for name, offset in offsets.items():
            topic, partition = name.split(OFFSET_FIELD_SEPARATOR)
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, int(partition)), timeout=0.5, cached=True
                )
            except Exception:  # lag is best effort; never stall the loop for it
                continue
            metrics.LAG.labels(topic, partition).set(max(0, high - offset))
            self.book.lag[f"{topic}/{partition}"] = max(0, high - offset)

    def _retrying_plain(self, step: Callable[[], T]) -> T:
        """Retry a Redis step inside a Kafka callback, where the loop's pausing cannot run."""
        delay = 0.1
        while True:
            try:
                return step()
            except self.store.transient_errors as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _commit(self, offsets: dict[str, int]) -> None:
        if not offsets:
            return
        partitions = []
        for name, offset in offsets.items():
            topic, partition = name.split(OFFSET_FIELD_SEPARATOR)
            partitions.append(TopicPartition(topic, int(partition), offset))
        try:
            # Asynchronous: the offsets that count are already in Redis; Kafka's are a hint.
            self.consumer.commit(offsets=partitions, asynchronous=True)
        except Exception as exc:  # the Redis offsets are authoritative; Kafka's can lag
            log.warning("kafka commit failed (%s); offsets are safe in Redis", exc)

    def _dead_letter(self, message: Message, reason: str, cid: str) -> Outgoing:
        topic, partition, offset = _position(message)
        headers = [
            (CORRELATION_HEADER, cid.encode()),
            ("atp-error", reason.encode("utf-8", "replace")[:2000]),
            ("atp-source-topic", topic.encode()),
            ("atp-source-partition", str(partition).encode()),
            ("atp-source-offset", str(offset).encode()),
        ]
        return Outgoing(
            self.options.dead_letter_topic, message.key(), message.value() or b"", headers
        )

    def _retrying(self, step: Callable[[], Any], stop: threading.Event) -> None:
        """Run a step until it succeeds: Redis or broker outages delay, never lose."""
        delay = 0.1
        paused: list[TopicPartition] = []
        while True:
            try:
                step()
                break
            except self.store.transient_errors as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
            if stop.is_set() and not paused:
                # Shutting down: the batch is not applied and not committed; the next
                # start consumes it again.
                return
            if not paused:
                paused = self.consumer.assignment()
                if paused:
                    self.consumer.pause(paused)
            # Keep polling while paused so the group does not evict us (max.poll.interval).
            # A partition assigned meanwhile is not paused: rewind whatever it delivered.
            for message in self.consumer.consume(num_messages=1, timeout=delay):
                if message.error() is None:
                    self.consumer.seek(TopicPartition(*_position(message)))
            self._touch_alive()
            if stop.is_set():
                return
            delay = min(delay * 2, 5.0)
        if paused:
            self.consumer.resume(paused)

    def _write_snapshot(self) -> None:
        if time.monotonic() - self._last_snapshot < 1.0:
            return
        self._last_snapshot = time.monotonic()
        s = self.stats
        snapshot = self.book.snapshot(s.consumed, s.applied, s.duplicates, s.dead_lettered, s.swept)
        try:
            self.store.put_snapshot(self.book.instance, encode_snapshot(snapshot))
        except (
            self.store.transient_errors
        ):  # figures for people; the loop's own retries handle Redis
            pass

    def _touch_alive(self) -> None:
        if self.options.alive_file and time.monotonic() - self._last_alive > 1.0:
            Path(self.options.alive_file).touch()
            self._last_alive = time.monotonic()
