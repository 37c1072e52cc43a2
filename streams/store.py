"""What the consumer needs of the place the projection lives: a Protocol, no adapter.

``atp_service.store.redis_store.RedisStore`` implements it on Redis; the consumer's unit
tests use an in-memory one. A sku's state, projection and dedupe marks land together,
and only where the sku still has the version the change set names; the offsets and staged
ledger rows land only once every sku of the change set did. A write refused part-way may
leave some skus written: the consumer reads them again and folds the batch again, and the
read names the events such a write applied (``Snapshot.unfinished``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from allocation.kits import KitDefinition
from streams.changeset import ChangeSet
from streams.state import SkuState


@dataclass(frozen=True)
class Snapshot:
    """Skus as read: their states and versions, which of the asked event_ids were applied
    already, and which of those the first steps of a write that never finished applied
    (atp_service/store/write_plan.py, ``steps``), each with the offsets that write ended
    at ("topic\x1fpartition" -> next offset): the ledger counts the first message of each
    below those offsets as applied."""

    states: dict[str, SkuState]
    versions: dict[str, int]
    seen: frozenset[str]
    unfinished: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


class KitDue(NamedTuple):
    """A kit to compute again: writes of its components in ``shard`` counted ``writes``
    since it was last computed from them (write.lua)."""

    shard: int
    kit: str
    writes: int


class ProjectionMissing(Exception):
    """The store has no projection marker: it lost its data (or was never initialized).

    Operator action: stop the consumers and run `atp rebuild`; a consumer whose ledger is
    empty initializes a new store by itself.
    """


class ServerReplaced(Exception):
    """The write assumed states from a server (by its id) that is gone: it restarted
    (possibly from older data) or a replica took over. Nothing was written."""


class Store(Protocol):
    """The consumer's store. Any method may raise one of ``transient_errors`` while the
    store is unreachable; the consumer retries those with backoff."""

    transient_errors: tuple[type[Exception], ...]

    def read(
        self, skus: Sequence[str], event_ids: Mapping[str, Sequence[str]] | None = None
    ) -> Snapshot: ...

    def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        """Apply. Returns [] when all landed, else the skus whose version moved since the
        change set was folded, and those of the change set that landed (to be read again);
        the offsets did not move. Raises ProjectionMissing or ServerReplaced."""
        ...

    def server_id(self) -> str: ...

    def marker(self) -> str | None: ...

    def mark_initialized(self, how: str) -> None: ...

    def put_snapshot(self, instance: str, payload: bytes, ttl_s: int = 30) -> None: ...

    def offsets(self) -> dict[str, int]: ...

    def due(self, now_ms: int, limit: int) -> list[str]: ...

    def kits(self, skus: Sequence[str]) -> dict[str, KitDefinition]:
        """The kits in force among ``skus`` (contract section 10)."""
        ...

    def kits_due(self, limit: int) -> list[KitDue]:
        """Kits whose components were written since they were last computed, up to
        ``limit`` per shard."""
        ...

    def kits_computed(self, entries: Sequence[KitDue]) -> None:
        """Forget these, each only if no write of a component counted since it was read."""
        ...

    def install_kits(self, configured: Sequence[KitDefinition], now_ms: int) -> int:
        """Make the config file's kits those in force where none was set over HTTP, and
        mark every kit due (a definition changed by a process that died before it marked
        its kit is computed again)."""
        ...

    def capacity_used(self, day: int) -> dict[str, int]:
        """Location -> units stock allocations took there on that UTC day (section 11)."""
        ...

    def outbox(self, limit: int) -> dict[str, bytes]: ...

    def documents(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """The stored read documents of these (channel, sku) pairs, those that exist."""
        ...

    def ack_outbox(self, outbox_ids: Sequence[str]) -> int: ...

    def order_results(self, order_ids: Sequence[str]) -> dict[str, bytes]:
        """The current result (contract section 4, JSON) of those orders that exist."""
        ...

    def staged_ledger(self) -> dict[str, bytes]: ...

    def drop_staged_ledger(self, names: Sequence[str]) -> None: ...
