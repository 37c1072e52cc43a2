"""The staged ledger rows of the partitions this consumer owns, moved into Parquet files
about once a second, on a thread of its own while the loop goes on with batches.

A batch's ledger rows are staged in the store by the write that applies the batch; here
they reach files (streams/ledger.py) and are then dropped from the store. The rows of a
partition are moved only by the consumer that owns it, so two never write the same file.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from streams.ledger import Ledger, parse_staged_field
from streams.store import Store

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S: Final = 1.0


class LedgerFlusher:
    def __init__(self, store: Store, ledger: Ledger | None) -> None:
        self.store = store
        self.ledger = ledger
        self.owned: frozenset[tuple[str, int]] = frozenset()  # (topic, partition) assigned
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def flush(self) -> int:
        """Move the staged rows of the owned partitions into files; returns how many
        staged entries moved."""
        if self.ledger is None:
            return 0
        owned = self.owned
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

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="ledger-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then move what is staged one last time."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        except self.store.transient_errors as exc:  # the rows stay staged in the store
            log.warning("could not move the staged ledger rows to files on shutdown: %s", exc)

    def _loop(self) -> None:
        while not self._stopping.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except Exception as exc:  # the rows stay staged; the next round tries again
                log.warning("ledger flush failed (%s); retrying", exc)
