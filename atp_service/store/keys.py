"""The Redis key layout, in one place.

Every key of one sku shares the hash tag ``{sku}`` so the sku's state, projection and dedupe
marks live in one Redis Cluster slot. Keys are versioned (``atp:v1``) so a layout change can
be rolled out beside the old one and rebuilt.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "atp:v1"
DUE: Final = f"{PREFIX}:due"  # zset sku -> ms when its projection changes with no event
OUTBOX: Final = f"{PREFIX}:outbox"  # hash write id -> that write's availability events (msgpack)
# hash "topic\x1fpartition\x1ffirst offset" -> ledger rows not yet in a ledger file
LEDGER_STAGED: Final = f"{PREFIX}:ledger:staged"
INVALIDATIONS: Final = f"{PREFIX}:changed"  # pub/sub: skus whose projection was rewritten
# Exists while Redis holds a projection built from the start (by a consumer that found its
# ledger empty, or by `atp rebuild`). The write script refuses every write without it, so
# nothing is folded onto a Redis that lost its data.
INITIALIZED: Final = f"{PREFIX}:initialized"
# hash kit sku -> its definition (JSON, allocation.kits.KitDefinition), every kit in force
KITS: Final = f"{PREFIX}:kits"
KITS_VERSION: Final = f"{PREFIX}:kits:version"  # moves with every change of a kit record
STATE_FIELD: Final = "s"
VERSION_FIELD: Final = "v"


def sku_key(sku: str) -> str:
    """Hash of one sku: v (version), s (raw state), p:<channel> (projection document)."""
    return f"{PREFIX}:{{{sku}}}"


def seen_key(sku: str) -> str:
    """Sorted set of the sku's applied event_ids, scored by when they were applied (ms)."""
    return f"{PREFIX}:{{{sku}}}:seen"


def kits_of_key(sku: str) -> str:
    """Set of the kits ``sku`` is a component of. write.lua builds the same name from KITS."""
    return f"{PREFIX}:{{{sku}}}:kits"


def offsets_key(group_id: str) -> str:
    """Hash "topic\x1fpartition" -> next offset to consume, written with the state."""
    return f"{PREFIX}:offsets:{group_id}"


def order_key(order_id: str) -> str:
    return f"{PREFIX}:order:{order_id}"


def capacity_key(day: int) -> str:
    """Hash location -> units its stock allocations took on that UTC day (days since the
    epoch), for the locations with a capacity (contract section 11). write.lua lets it
    expire 3 days after its last count."""
    return f"{PREFIX}:capacity:{day}"


def line_key(sku: str, order_id: str, line_id: str) -> str:
    """Hash of what re-plans made of one order line's backorder (streams/backorders.py): in
    its sku's slot, as the write that re-plans it writes the sku. Neither id holds a colon."""
    return f"{PREFIX}:{{{sku}}}:line:{order_id}:{line_id}"


def is_line_key(key: bytes) -> bool:
    return b"}:line:" in key


def changes_key(channel: str) -> str:
    """Stream of skus whose available_to_sell changed on ``channel`` (the changes feed)."""
    return f"{PREFIX}:changes:{channel}"


CHANGES_RETENTION_MS: Final = 26 * 3_600_000  # the contract asks for at least 24 hours


def consumers_key(group_id: str) -> str:
    """Hash instance -> ConsumerSnapshot JSON of every live consumer of the group."""
    return f"{PREFIX}:consumers:{group_id}"
