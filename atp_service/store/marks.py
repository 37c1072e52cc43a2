"""Dedupe marks as 64-bit digests: what an applied event_id is stored as.

A sku's marks are sets of signed 64-bit integers (Redis keeps them as intsets, 8 bytes an
id, found by binary search), one set per bucket of ``keys.MARKS_BUCKET_MS``, each expiring a
window after its bucket ends (write.lua). An event_id is stored as its BLAKE2b digest, keyed
with a random key of the shard's own (``keys.Layout.digest_key``): made together with the
projection marker, and lost together with the marks it keys, so a node replaced by an empty
one starts over with a new key and a rebuild. A producer cannot choose ids whose digests
collide with another's without that key; by chance, a new event is taken for a duplicate
with probability n / 2**64 for a sku holding n ids (docs/architecture.md).

Every write names the key its digests were made with; write.lua refuses a write whose key
is not the shard's (``DigestKeyChanged``: the shard was rebuilt since the key was read).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio as aredis

from atp_service.store import keys
from streams.store import ServerReplaced

KEY_BYTES = 16


class DigestKeyChanged(ServerReplaced):
    """The shard's digest key is not the one a write's digests were made with."""


@functools.lru_cache(maxsize=64)
def _keyed(key: bytes) -> Any:
    """A hasher with the key taken in: copying it costs half of keying a new one."""
    return hashlib.blake2b(digest_size=8, key=key)


def digests(key: bytes, event_ids: Iterable[str]) -> list[str]:
    """The marks of ``event_ids``: signed 64-bit integers, in decimal as an intset keeps
    them."""
    copy = _keyed(key).copy
    raw = []
    for event_id in event_ids:
        hasher = copy()
        hasher.update(event_id.encode())
        raw.append(hasher.digest())
    # One unpack for them all: a re-plan marks tens of thousands of ids in a write.
    return list(map(str, struct.unpack(f">{len(raw)}q", b"".join(raw))))


def digest(key: bytes, event_id: str) -> str:
    return digests(key, (event_id,))[0]


def new_key() -> str:
    return secrets.token_hex(KEY_BYTES)


class DigestKeys:
    """The shards' digest keys, read once and again after a write refused for its key.
    A shard without one (no projection) has None: its reads find no marks, and its writes
    are refused by write.lua as the marker's absence refuses them."""

    def __init__(self, layout: keys.Layout) -> None:
        self.layout = layout
        self._keys: list[bytes | None] | None = None

    def forget(self) -> None:
        self._keys = None

    def _taken(self, found: Sequence[Any]) -> list[bytes | None]:
        held = [bytes.fromhex(value.decode()) if value else None for value in found]
        if all(value is not None for value in held):
            self._keys = held  # a shard without a key is read again next time
        return held

    def _names(self) -> list[str]:
        return [self.layout.digest_key(shard) for shard in range(self.layout.shards)]

    def of(self, client: redis.Redis) -> list[bytes | None]:
        if self._keys is not None:
            return self._keys
        pipe = client.pipeline(transaction=False)
        for name in self._names():
            pipe.get(name)
        return self._taken(pipe.execute())

    async def of_async(self, client: aredis.Redis) -> list[bytes | None]:
        if self._keys is not None:
            return self._keys
        pipe = client.pipeline(transaction=False)
        for name in self._names():
            pipe.get(name)
        return self._taken(await pipe.execute())
