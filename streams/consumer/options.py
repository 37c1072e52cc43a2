"""The consumer's settings, its counters, and names shared by its steps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from allocation.kits import KitDefinition

OFFSET_FIELD_SEPARATOR: Final = "\x1f"
# The API's own reservation events: the API marks them applied when it writes them.
API_EVENT_PREFIXES: Final = ("atp-alloc:", "atp-release:")


def offset_field(topic: str, partition: int) -> str:
    """The field of the store's offsets that holds a partition's next offset."""
    return f"{topic}{OFFSET_FIELD_SEPARATOR}{partition}"


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class ConsumerOptions:
    topics: tuple[str, ...]
    dead_letter_topic: str
    availability_topic: str
    # Where the outbox's other messages go: re-planned reservations, orders' plan updates.
    reservations_topic: str
    allocation_updates_topic: str
    stock_states_topic: str
    known_channels: frozenset[str]
    batch_size: int
    batch_timeout_s: float
    sweep_interval_s: float
    window_us: int
    max_message_bytes: int
    alive_file: str | None = None
    # The config file's kits, installed in the store at start (contract section 10).
    kits: tuple[KitDefinition, ...] = ()
    shards: int = 1  # the store's (streams/shards.py)


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


class ReadAheadFailed(Exception):
    """Consuming or decoding the next batch failed while a write was in flight.

    Not retried in place (the messages consumed so far are not held anywhere): the loop
    stops, and a restart consumes them again from the offsets in the store.
    """


class BatchAbandoned(Exception):
    """The partitions changed hands after the batch was consumed and before its write
    landed: its messages are delivered again (to us or to their new owner) and must not be
    applied from here."""


class LedgerAhead(Exception):
    """The ledger holds a partition that the store has no offsets for: it lost its data.

    Operator action: stop the consumers and run `atp rebuild`, which restores the projection
    and the offsets from the ledger; then start the consumers again.
    """
