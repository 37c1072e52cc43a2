"""The Redis key layout, in one place.

Keys are grouped in shards (streams/shards.py): every key of a shard carries the shard's
hash tag, so a shard lives in one Redis Cluster slot and one script can write it whole. A
shard holds its skus' hashes, dedupe marks, kit sets and line records, and its own due set,
outbox, staged ledger rows, offsets, changes streams and projection marker. A few keys
belong to no shard: kit definitions, orders, capacity counts, the group's consumers, and
the group's offsets when there are several shards.

A single Redis has one shard. Keys are versioned (``atp:v3``) so a layout change can be
rolled out beside the old one and rebuilt (``atp rebuild``).
"""

from __future__ import annotations

import binascii
from functools import cached_property
from typing import Final

from streams.shards import shard_of

PREFIX: Final = "atp:v3"
SLOTS: Final = 16384
# hash kit sku -> its definition (JSON, allocation.kits.KitDefinition), every kit in force
KITS: Final = f"{PREFIX}:kits"
# Moves with every change of a kit record. Tagged with KITS's own name, so that both are in
# one cluster slot and the script that sets a record checks and moves it.
KITS_VERSION: Final = f"{{{KITS}}}:version"
STATE_FIELD: Final = "s"
VERSION_FIELD: Final = "v"
SKU_PART: Final = ":s:"  # between a shard's prefix and the sku in a sku hash's name
LINES_PART: Final = "lines:"  # after a shard's prefix, before the sku: its hash of lines
# Dedupe marks are kept in sets per bucket of this many ms (3.5 days), each set expiring a
# window after its bucket ends: an id is kept at least the window, at most 3.5 days longer.
# Fixed, so that a change of the window never hides the marks already kept; write.lua and
# the read script (atp_service/store/read_plan.py) count buckets the same way.
MARKS_BUCKET_MS: Final = 302_400_000


class SpansShards(Exception):
    """A write that must be atomic as a whole touches keys of several shards, which a Redis
    Cluster cannot write in one script. With several shards, orders are written in steps
    (atp_service/sharded_allocator.py) and capacity counts claimed before the skus' parts
    (atp_service/store/capacity.py), so this names a write built for one shard."""


def slot_of(key: str) -> int:
    """The Redis Cluster slot of a key (CRC16 of its hash tag, or of the whole key)."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


def _tag(shard: int, shards: int) -> str:
    """A tag for the shard whose slot is in the shard's own 1/shards of the slot range, so
    that shards spread evenly over nodes that own contiguous ranges."""
    low, high = shard * SLOTS // shards, (shard + 1) * SLOTS // shards
    n = 0
    while not low <= slot_of(f"{{{shard}.{n}}}") < high:
        n += 1
    return f"{shard}.{n}"


class Layout:
    """The key names of a store with ``shards`` shards."""

    def __init__(self, shards: int = 1) -> None:
        if not 1 <= shards <= SLOTS:
            raise ValueError(f"shards must be 1 to {SLOTS}, not {shards}")
        self.shards = shards

    @cached_property
    def tags(self) -> tuple[str, ...]:
        return tuple(_tag(s, self.shards) for s in range(self.shards))

    @cached_property
    def prefixes(self) -> tuple[str, ...]:
        """Per shard, the start of every key name of that shard."""
        return tuple(f"{PREFIX}:{{{tag}}}:" for tag in self.tags)

    def shard(self, sku: str) -> int:
        return shard_of(sku, self.shards)

    def _of(self, sku: str) -> str:
        return self.prefixes[shard_of(sku, self.shards)]

    # -- a sku's keys -------------------------------------------------------------------

    def sku_key(self, sku: str) -> str:
        """Hash of one sku: v (version), s (raw state), p:<channel> (projection document)."""
        return f"{self._of(sku)}s:{sku}"

    def marks_key(self, sku: str, bucket: int) -> str:
        """Set of digests (atp_service/store/marks.py) of the event_ids applied to the sku in
        one bucket of ``MARKS_BUCKET_MS``; write.lua and the read script build the same name."""
        return f"{self._of(sku)}e:{bucket}:{sku}"

    def kits_of_key(self, sku: str) -> str:
        """Hash of the kits ``sku`` is a component of -> the version of all kits when that
        was last set (atp_service/store/kit_records.py); write.lua builds the same name."""
        return f"{self._of(sku)}kh:{sku}"

    def lines_key(self, sku: str) -> str:
        """Hash of what re-plans made of the backorders of the sku's order lines, one field
        per line (streams/backorders.py ``line_field``): in its sku's shard, as the write
        that re-plans the sku writes it (in the sku's step, ``steps``)."""
        return f"{self._of(sku)}{LINES_PART}{sku}"

    # -- a shard's keys -----------------------------------------------------------------

    def due_key(self, shard: int) -> str:
        """Sorted set sku -> ms when its projection changes with no event."""
        return f"{self.prefixes[shard]}due"

    def outbox_key(self, shard: int) -> str:
        """Hash write id -> that write's events for the broker (msgpack)."""
        return f"{self.prefixes[shard]}outbox"

    def staged_key(self, shard: int) -> str:
        """Hash "topic\x1fpartition\x1ffirst offset" -> ledger rows not yet in a file."""
        return f"{self.prefixes[shard]}staged"

    def marker_key(self, shard: int) -> str:
        """Exists while the shard holds a projection built from the start (by a consumer
        that found its ledger empty, or by `atp rebuild`). The write script refuses every
        write without it, so nothing is folded onto a node that lost its data."""
        return f"{self.prefixes[shard]}initialized"

    def digest_key(self, shard: int) -> str:
        """String: the random key of the shard's mark digests (atp_service/store/marks.py),
        made with the marker and lost with the marks it keys."""
        return f"{self.prefixes[shard]}digest"

    def rows_key(self, shard: int, write_id: str, n: int) -> str:
        """String: one staged value of ``staged`` too large to pass through a script, which
        the staged hash names (atp_service/store/write_plan.py, ``ROWS_INLINE_MAX``)."""
        return f"{self.prefixes[shard]}rows:{write_id}:{n}"

    def shard_offsets_key(self, shard: int, group_id: str) -> str:
        """Hash "topic\x1fpartition" -> next offset, written with the shard's part of each
        batch."""
        return f"{self.prefixes[shard]}offsets:{group_id}"

    def kits_due_key(self, shard: int) -> str:
        """Sorted set kit sku -> how many writes of the shard's skus that are its components
        came since the kit was last computed; write.lua counts, and the sweep removes a
        kit's entry after computing it, only if no write counted meanwhile."""
        return f"{self.prefixes[shard]}kd"

    def kits_flag_key(self, shard: int) -> str:
        """Exists once a sku of the shard was a kit's component: only then does write.lua
        look for the kits of the skus it writes."""
        return f"{self.prefixes[shard]}kits"

    def changes_key(self, shard: int, channel: str) -> str:
        """Stream of the shard's skus whose available_to_sell changed on ``channel``."""
        return f"{self.prefixes[shard]}changes:{channel}"

    def invalidations(self, shard: int) -> str:
        """Sharded pub/sub channel: the shard's skus whose projection was rewritten."""
        return f"{self.prefixes[shard]}changed"

    # -- keys of no shard ---------------------------------------------------------------

    def offsets_key(self, group_id: str) -> str:
        """Hash "topic\x1fpartition" -> next offset to consume: below it every shard holds
        every event. With one shard it is the shard's own."""
        if self.shards == 1:
            return self.shard_offsets_key(0, group_id)
        return f"{PREFIX}:offsets:{group_id}"

    def order_key(self, order_id: str) -> str:
        return f"{PREFIX}:order:{order_id}"

    def unpublished_key(self) -> str:
        """Hash order_id -> ms when its record was written, of orders whose reservations the
        broker has not acknowledged yet (atp_service/allocator.py, ``publish_unpublished``)."""
        return f"{PREFIX}:unpublished"

    def capacity_key(self, day: int) -> str:
        """Hash location -> units its stock allocations took on that UTC day (days since the
        epoch), for the locations with a capacity (contract section 11). write.lua lets it
        expire 3 days after its last count."""
        return f"{PREFIX}:capacity:{day}"

    def capacity_claims_key(self, day: int) -> str:
        """With several shards: hash "<sku>\x1f<reservation_id>" -> "<location>\x1f<units>" of
        the stock reservations counted in that day's ``capacity_key``, whose slot it shares
        (its tag is that key's name). Counting is claimed per reservation before the skus'
        parts are written, so a claim made again (a write folded again) counts once, and
        one whose reservation was not made is given back (atp_service/store/capacity.py)."""
        return f"{{{self.capacity_key(day)}}}:claims"


SINGLE: Final = Layout(1)
SKU_PATTERN: Final = f"{PREFIX}:{{*}}{SKU_PART}*"  # SCAN pattern of every sku hash


def sku_of(key: bytes | str) -> str | None:
    """The sku of a sku hash's name (of any layout), or None for any other key."""
    text = key.decode() if isinstance(key, bytes) else key
    # A tag holds no '}': the first ends it. SKU_PATTERN also matches, say, the lines hash
    # of a sku that holds "}:s:" itself; only a sku hash has SKU_PART right after the tag.
    at = text.find("}")
    if not text.startswith(PREFIX + ":{") or at < 0 or not text.startswith(SKU_PART, at + 1):
        return None
    return text[at + 1 + len(SKU_PART) :]


def is_lines_key(key: bytes) -> bool:
    """Whether ``key`` is a sku's hash of lines (of any layout)."""
    at = key.find(b"}:")  # a tag holds no '}': the first ends it
    return key.startswith(f"{PREFIX}:{{".encode()) and key.startswith(LINES_PART.encode(), at + 2)


def is_rows_key(key: bytes) -> bool:
    return b"}:rows:" in key


CHANGES_RETENTION_MS: Final = 26 * 3_600_000  # the contract asks for at least 24 hours


def consumers_key(group_id: str) -> str:
    """Hash instance -> ConsumerSnapshot JSON of every live consumer of the group."""
    return f"{PREFIX}:consumers:{group_id}"
