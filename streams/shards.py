"""Which shard a sku's data lives in.

On a Redis Cluster a script may only touch keys of one hash slot, so the store's keys carry
a shard's hash tag, not a sku's: every key of the skus of one shard, and that shard's own
due set, outbox, staged ledger rows and offsets, live in one slot and are written by one
script. With one shard (a single Redis) everything is written together, as one write.

Pure, and fixed for a store's life: the store's keys are named after it.
"""

from __future__ import annotations

import zlib


def shard_of(sku: str, shards: int) -> int:
    if shards == 1:
        return 0
    return zlib.crc32(sku.encode()) % shards
