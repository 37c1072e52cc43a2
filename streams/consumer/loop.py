"""The loop that runs the steps: consume, decode (batch.py), fold (folding.py), write to the
store, publish (outbox.py), commit; plus the sweep, the ledger flusher and rebalances.

While a batch's write is in flight (on a thread of its own) the next batch is consumed,
decoded and folded on top of the states being written (``_prepare``); that work is used
only if the write lands and no assumption was dropped meanwhile.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Final

from confluent_kafka import Consumer, Message, TopicPartition

from streams import metrics
from streams.changeset import ChangeSet
from streams.consumer import partitions
from streams.consumer.batch import Batch, decode_batch, set_aside
from streams.consumer.figures import Figures
from streams.consumer.folding import (
    Folder,
    Prepared,
    Unfoldable,
    Written,
    as_written,
    count,
    events_by_sku,
)
from streams.consumer.ledger_flush import LedgerFlusher
from streams.consumer.options import (
    BatchAbandoned,
    ConsumerOptions,
    LedgerAhead,
    ReadAheadFailed,
    Stats,
    now_us,
)
from streams.consumer.outbox import OutboxPublisher
from streams.consumer.sweep import Sweeper
from streams.consumer.written import WrittenStates
from streams.events import AnyEvent
from streams.kafka import ReliableProducer
from streams.ledger import Ledger
from streams.projector import Projector
from streams.state import US_PER_DAY
from streams.store import ProjectionMissing, ServerReplaced, Store

log = logging.getLogger(__name__)

COLLECT_INTERVAL_S: Final = 10.0


class ConsumerLoop:
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
        self.folder = Folder(projector, options.window_us, ledger, options.shards)
        self.written = WrittenStates(store)
        self.outbox = OutboxPublisher(
            store,
            producer,
            options.availability_topic,
            options.reservations_topic,
            options.allocation_updates_topic,
            options.stock_states_topic,
            dict(
                zip(
                    projector.network.channels,
                    projector.network.low_stock_threshold.tolist(),
                    strict=True,
                )
            ),
        )
        self.flusher = LedgerFlusher(store, ledger)
        self.figures = Figures(store, consumer, options.alive_file)
        self.sweeper = Sweeper(
            store, projector, self.written, self.outbox, self.stats, options.window_us, self.room
        )
        self._initialized = False
        self._stop = threading.Event()  # run()'s, once it runs: Kafka callbacks heed it too
        self._last_sweep = 0.0
        # The batch's write runs on this thread so the loop can consume, decode and fold the
        # next batch meanwhile (``_read_ahead``); one thread, so writes stay in order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-write")
        self._writing: Future[list[str]] | None = None
        # Messages consumed (and, once decoded, their batch) during the last write.
        self._ahead: tuple[list[Message], Batch] | None = None
        self._rebalances = 0  # assignments and revocations seen, to spot stale batches
        # While a write is in flight, what it writes (as ``written`` will hold it if it
        # lands), and the next batch folded on top of that meanwhile (``_prepare``).
        self._landing: Written = {}
        self._prepared: Prepared | None = None
        # A landed write's outbox waits for the next batch's write when that batch was
        # folded during it (``_process``); at most one write in a row waits.
        self._publish_held = False
        # The last write's fold and change set, kept until the next write is in flight:
        # freeing a re-plan's hundreds of thousands of objects took longer than a small
        # batch's whole write, and in between they held the next write back.
        self._spent: object = None

    # -- the loop ---------------------------------------------------------------------

    def ensure_initialized(self, wrote: bool = False) -> None:
        """Mark an empty store as ours to fill, unless it lost its data: the ledger has
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
        self._stop = stop
        self._retrying(self.ensure_initialized, stop)
        self._retrying(
            lambda: self.store.install_kits(self.options.kits, self.clock() // 1000), stop
        )
        self.consumer.subscribe(
            list(self.options.topics), on_assign=self.on_assign, on_revoke=self.on_revoke
        )
        self.flusher.start()
        # The loop's objects die by reference count, but the cyclic collector runs each time
        # ~700 new containers outlive their statement and walks all of them: a large batch
        # triggered it thousands of times, about a sixth of the CPU per event. Off while the
        # loop runs, with a full collection every COLLECT_INTERVAL_S for the rare cycle.
        collecting = gc.isenabled()
        gc.disable()
        last_collect = time.monotonic()
        try:
            while not stop.is_set():
                if time.monotonic() - last_collect >= COLLECT_INTERVAL_S:
                    gc.collect()
                    last_collect = time.monotonic()
                batch: Batch | None
                ahead = self.take_ahead()
                if ahead is not None:
                    messages, batch = ahead
                else:
                    messages, generation = self._next_batch()
                    batch = self.decode(messages, generation) if messages else None
                if messages:
                    self._retrying(partial(self.process, messages, batch, read_ahead=True), stop)
                else:
                    self._spent = None  # idle: nothing to hold back
                    if self._publish_held:  # the batch folded ahead was dropped (a rebalance)
                        self._publish_held = False
                        self._retrying(self.publish_outbox, stop)
                if self._publish_held:
                    continue  # the batch folded ahead is written before the sweep runs
                if time.monotonic() - self._last_sweep >= self.options.sweep_interval_s:
                    self._retrying(self.sweep, stop)
                    self._last_sweep = time.monotonic()
                self.figures.alive()
                self.figures.snapshot(self.stats)
        except partitions.Stopped:
            log.info("stopped while the store was unavailable; no partition was started")
        else:
            if self._publish_held:
                self._publish_held = False
                try:
                    self.publish_outbox()
                except self.store.transient_errors as exc:  # in the store: published later
                    log.warning("could not publish on stopping (%s)", exc)
        finally:
            self.flusher.stop()
            self._writer.shutdown(wait=True)
            self.consumer.close()
            if collecting:
                gc.enable()

    def flush_ledger(self) -> int:
        return self.flusher.flush()

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
                # Partitions changed hands inside that call and were sought to the stored
                # offsets: what came before it is delivered again from there.
                messages, generation = [], self._rebalances
            if not more:
                break
            messages.extend(more)
        return messages, generation

    def decode(self, messages: Iterable[Message], generation: int | None = None) -> Batch:
        batch = decode_batch(
            messages,
            max_message_bytes=self.options.max_message_bytes,
            known_channels=self.options.known_channels,
            dead_letter_topic=self.options.dead_letter_topic,
            generation=self._rebalances if generation is None else generation,
        )
        self.stats.consumed += batch.size
        return batch

    def process(
        self, messages: list[Message], batch: Batch | None = None, read_ahead: bool = False
    ) -> None:
        """Apply one consumed batch (``batch``: its messages decoded already), publish its
        availability events and commit it. With ``read_ahead`` the next batch is consumed and
        decoded while this one's write is in flight, and kept for the loop."""
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
            # Dead letters are delivered before the offsets move past them in the store.
            self.producer.send_all(batch.dead)
            self.stats.dead_lettered += len(batch.dead)
        try:
            self.apply(batch.events, batch.offsets, batch, self._read_ahead if read_ahead else None)
        except Unfoldable as exc:
            topic = self.options.dead_letter_topic
            self.producer.send_all(set_aside(messages, batch, exc.culprits, topic))
            self.stats.dead_lettered += len(exc.culprits)
            self.apply(batch.events, batch.offsets, batch)
        applied = time.perf_counter() - started
        if self._prepared is not None and not self._publish_held:
            # The next batch is folded and only waits for its write. Publishing first would
            # delay that write by the outbox's whole publishing, which a re-plan makes long
            # (thousands of reservation events and notices); it goes right after instead.
            self._publish_held = True
        else:
            self._publish_held = False
            try:
                self.publish_outbox()
            except self.store.transient_errors as exc:
                # The batch landed: its events wait in the store's outbox for the next sweep.
                log.warning("could not publish after a batch (%s); the sweep will", exc)
        partitions.commit(self.consumer, batch.offsets)
        self.stats.batches += 1
        self.figures.batch_done(messages, batch, applied)

    def apply(
        self,
        events: list[AnyEvent],
        offsets: dict[str, int],
        batch: Batch | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """Fold the events into the store, again from a fresh read if the API wrote meanwhile.

        ``meanwhile`` runs while the write is in flight (it must not touch these skus).
        """
        if not self._initialized:
            # Before the ledger is written: its files are what tell a lost store apart.
            self.ensure_initialized()
            self._initialized = True
        by_sku = events_by_sku(events)
        prepared, self._prepared = self._prepared, None
        if prepared is not None and (
            prepared.batch is not batch
            or prepared.epoch != self.written.epoch
            or not self.written.swept.isdisjoint(by_sku)
        ):
            # Prepared for another batch, on assumptions dropped since, or on a state of a
            # sku the sweep wrote since.
            prepared = None
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
                known = self.written.known(by_sku, {})
                result, changes = self.folder.fold(
                    events, by_sku, offsets, known, now, self.written.server, batch, self.room(now)
                )
            landing = self._landing = as_written(changes)
            try:
                conflicts = self._write(changes, now, meanwhile)
            finally:
                self._landing = {}
            meanwhile = None
            if conflicts is None:
                continue
            if not conflicts:
                self.written.remember(landing)
                self.outbox.add(changes.outbox_id, changes.outbox)
                break
            self.written.conflicted(conflicts)
            self.stats.conflicts += 1
            metrics.CONFLICTS.inc()
        self.stats.applied += len(result.applied)
        self.stats.duplicates += len(result.duplicates)
        count(result.applied, "applied")
        count(result.duplicates, "duplicate")
        self._spent = (result, changes)

    def room(self, now: int) -> list[int] | None:
        """What each location may still give today (contract section 11), read before
        every fold: a write whose counts moved since is refused and folded again."""
        if not self.projector.capacities:
            return None
        return self.projector.room(self.store.capacity_used(now // US_PER_DAY))

    def _prepare(self, batch: Batch) -> Prepared | None:
        """Fold the batch read ahead while the current write is in flight, on the states
        that write is writing (skus it does not write are read: it cannot change them).
        Used only if that write lands and nothing was dropped meanwhile (the epoch); its
        own write checks the rest like any other."""
        written = self.written
        if not batch.events or not written.server or batch.generation != self._rebalances:
            return None
        by_sku = events_by_sku(batch.events)
        now = self.clock()
        epoch = written.epoch
        written.swept.clear()
        known = written.known(by_sku, self._landing)
        result, changes = self.folder.fold(
            batch.events, by_sku, batch.offsets, known, now, written.server, batch, self.room(now)
        )
        return Prepared(batch, epoch, now, result, changes)

    def _write(
        self, changes: ChangeSet, now_us: int, meanwhile: Callable[[], None] | None = None
    ) -> list[str] | None:
        """The write's conflicting skus, or None when it must be prepared again: the store
        had lost its data, or its server is not the one the write's assumptions came from.

        Never fold onto an empty store: with a ledger that means stopping for `atp rebuild`
        (LedgerAhead); without one, starting afresh.
        """
        try:
            return self._write_once(changes, now_us, meanwhile)
        except ServerReplaced:
            self._resync()
            return None
        except BaseException:
            self.written.forget()  # the write may have landed, or the store restarted
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
            self._spent = None  # once the write is under way: freeing holds the GIL
            # Nothing moves on while the write is in flight, whatever ``meanwhile`` did.
            writing, self._writing = self._writing, None
            try:
                conflicts = writing.result()
            finally:
                if failed is not None:
                    raise ReadAheadFailed(f"reading the next batch failed: {failed!r}") from failed
            return conflicts
        except ProjectionMissing:
            self.written.forget()
            self.ensure_initialized(wrote=True)
            return None

    def take_ahead(self) -> tuple[list[Message], Batch] | None:
        """The batch consumed (and, unless the read failed, folded) during the last write,
        handed over to be applied next with ``process``; None when there is none."""
        ahead, self._ahead = self._ahead, None
        return ahead

    @property
    def folded_ahead(self) -> bool:
        """Whether the batch read ahead is folded already, waiting only for its write."""
        return self._prepared is not None

    def _read_ahead(self) -> None:
        """Consume, decode and fold (``_prepare``) the next batch while this one is written:
        the wait for the store was a quarter of the loop's time, and then more."""
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
        self.written.forget()
        writing = self._writing
        if writing is not None:
            try:
                writing.result()
            except Exception:  # the loop sees the same error, and retries
                pass

    def sweep(self) -> None:
        """Recompute skus whose projection changes with no event: expiries, day changes."""
        self.sweeper.sweep(self.clock, self._write, self.options.sweep_interval_s)
        self.publish_outbox(from_redis=True)

    def publish_outbox(self, from_redis: bool = False) -> None:
        self.stats.published += self.outbox.publish(from_store=from_redis)

    def finish(self, timeout_s: float = 10.0) -> None:
        """On shutdown: wait for outstanding deliveries and clear what was acknowledged."""
        self.stats.published += self.outbox.finish(timeout_s)

    # -- partitions -------------------------------------------------------------------

    def on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        """The rebalance callback: seek every assigned partition to the offset stored with
        the state."""
        self._settle_write()
        self._start_from_store(assigned)
        log.info("assigned %s", [(tp.topic, tp.partition, tp.offset) for tp in assigned])
        self.flusher.owned = frozenset((tp.topic, tp.partition) for tp in assigned)
        consumer.assign(assigned)

    def on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        self._settle_write()
        # Their staged ledger rows are the next owner's to move to files from now on.
        gone = {(tp.topic, tp.partition) for tp in revoked}
        self.flusher.owned = frozenset(self.flusher.owned - gone)
        self.figures.given_up(gone)

    def _resync(self) -> None:
        """The store's server changed (a restart, or a replica took over): it may hold older
        data than this process wrote, and so older offsets. Consume again from those, as
        after a rebalance; the dedupe marks skip what it does hold."""
        self._settle_write()  # the batch in hand is abandoned, as in a rebalance
        assigned = self.consumer.assignment()
        self._start_from_store(assigned)
        for tp in assigned:
            self.consumer.seek(tp)
        log.warning("the Redis server changed (restart or failover): consuming again from %s",
                    [(tp.topic, tp.partition, tp.offset) for tp in assigned])  # fmt: skip

    def _start_from_store(self, assigned: list[TopicPartition]) -> None:
        transient = self.store.transient_errors
        # Initialized first: the stored offsets of an emptied store must not be trusted.
        partitions.retrying_plain(self.ensure_initialized, transient, self._stop)
        stored = partitions.retrying_plain(self.store.offsets, transient, self._stop)
        partitions.start_from(stored, self.ledger, assigned)

    def _retrying(self, step: Callable[[], object], stop: threading.Event) -> None:
        transient = self.store.transient_errors
        partitions.retrying(step, stop, self.consumer, transient, self.figures.alive)
