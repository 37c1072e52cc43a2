"""Settings made over HTTP, kept where a loss of Redis data does not reach them.

A safety-stock override or a kit set over HTTP lives in Redis, which is a projection:
`atp rebuild` makes the states again from the ledger, which holds the input events only. So every change is also produced to ``topics.overrides`` (default
``atp.overrides``, meant to be compacted), keyed by what it sets, and acknowledged by the
broker before the API answers; `atp rebuild` reads the topic and applies the latest
change of each key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from allocation.kits import KitComponent


class OverrideChanged(msgspec.Struct, frozen=True):
    kind: Literal["safety_stock", "kit"]
    channel: str  # "" for a kit
    sku: str
    quantity: int | None  # None: the override was removed; None for a kit
    at: int  # when it was set (µs), for people reading the topic
    # The sku's count of HTTP changes, taken in the version-checked write that made this
    # one: of two changes of one sku, the higher came later in Redis.
    seq: int = 0
    # A kit's components; None: the kit was deleted.
    components: tuple[KitComponent, ...] | None = None


_decoder: Final = msgspec.json.Decoder(OverrideChanged)


def message_key(change: OverrideChanged) -> bytes:
    return f"{change.kind}\x1f{change.channel}\x1f{change.sku}".encode()


def encode(change: OverrideChanged) -> bytes:
    return msgspec.json.encode(change)


def latest(values: Iterable[bytes]) -> dict[tuple[str, str, str], OverrideChanged]:
    """(kind, channel, sku) -> the latest change among the messages (by ``seq``; values
    that are not such a change, e.g. compaction's tombstones, are skipped)."""
    out: dict[tuple[str, str, str], OverrideChanged] = {}
    for value in values:
        try:
            change = _decoder.decode(value)
        except msgspec.DecodeError:
            continue
        key = (change.kind, change.channel, change.sku)
        if key not in out or (change.seq, change.at) >= (out[key].seq, out[key].at):
            out[key] = change
    return out
