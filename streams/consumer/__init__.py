"""The stream consumer: decode -> dead-letter -> fold -> atomic write -> publish -> commit.

The steps, each a module of this package: ``batch`` (messages into typed events and dead
letters), ``folding`` (events into states and the change set that writes them),
``written`` (the states written last, folded again without a read), ``outbox`` (the
availability events published), ``ledger_flush`` (staged ledger rows into files) and
``partitions`` (where partitions start, commits, retries); ``loop`` runs them. The store is
known only by its Protocol (streams/store.py).

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
(``written.py``); the write script checks what that assumes, and a wrong assumption is a
conflict (read, fold again). When the Redis server changed (restart or failover, seen by its
run_id), the partitions are consumed again from the offsets that server holds (``_resync``).
"""

from streams.consumer.batch import Batch, ledger_rows
from streams.consumer.folding import Unfoldable
from streams.consumer.loop import ConsumerLoop
from streams.consumer.options import (
    API_EVENT_PREFIXES,
    BatchAbandoned,
    ConsumerOptions,
    LedgerAhead,
    ReadAheadFailed,
    Stats,
    now_us,
    offset_field,
)

__all__ = [
    "API_EVENT_PREFIXES",
    "Batch",
    "BatchAbandoned",
    "ConsumerLoop",
    "ConsumerOptions",
    "LedgerAhead",
    "ReadAheadFailed",
    "Stats",
    "Unfoldable",
    "ledger_rows",
    "now_us",
    "offset_field",
]
