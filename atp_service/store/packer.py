"""How the consumer's Redis client puts a command on the wire.

A batch's write is one EVALSHA of a few hundred thousand arguments, among them a few blobs
of megabytes (the staged ledger rows, the availability events). redis-py's hiredis packer
copies every argument into one buffer, holding the GIL all the while. This packer packs the
small arguments with hiredis as before and hands the large ones to the socket as they are
(the connection sends a list of chunks one after another), so they are not copied.
"""

from __future__ import annotations

from typing import Final, cast

import hiredis
from redis.exceptions import DataError

# Above this a bytes argument is sent as its own chunk. Small enough that every ledger or
# outbox blob of a real batch is one; large enough that a sku's state never is.
LARGE_BYTES: Final = 64 * 1024


# What hiredis packs (its stubs type the tuple loosely as one element of these).
Arg = str | int | float | bytes | memoryview


class ChunkedPacker:
    """A ``command_packer`` for redis-py connections (``Redis(command_packer=...)``)."""

    def pack(self, *args: Arg | bytearray) -> list[bytes | memoryview]:
        # A command name of two words ("SCRIPT LOAD") is two arguments on the wire.
        first = args[0]
        if isinstance(first, str) and " " in first:
            args = (*first.encode().split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return _chunks(args)
        except TypeError:
            pass
        # As redis-py's own packer: bytearrays as bytes, and anything else hiredis cannot
        # pack is the caller's DataError, not a TypeError from deep in the client.
        plain = tuple(bytes(arg) if isinstance(arg, bytearray) else arg for arg in args)
        try:
            return _chunks(plain)
        except TypeError as exc:
            raise DataError(f"cannot send {exc}") from None


def _chunks(args: tuple[Arg | bytearray, ...]) -> list[bytes | memoryview]:
    large = [i for i, arg in enumerate(args) if type(arg) is bytes and len(arg) > LARGE_BYTES]
    if not large:
        return [hiredis.pack_command(args)]  # type: ignore[arg-type]
    chunks: list[bytes | memoryview] = [b"*%d\r\n" % len(args)]
    start = 0
    for i in large:
        if start < i:
            chunks.append(_without_header(hiredis.pack_command(args[start:i])))  # type: ignore[arg-type]
        blob = cast(bytes, args[i])  # by the choice of ``large``
        chunks += [b"$%d\r\n" % len(blob), blob, b"\r\n"]
        start = i + 1
    if start < len(args):
        chunks.append(_without_header(hiredis.pack_command(args[start:])))  # type: ignore[arg-type]
    return chunks


def _without_header(packed: bytes) -> memoryview:
    """hiredis packs a whole command; its arguments without the leading ``*<count>\\r\\n``."""
    return memoryview(packed)[packed.index(b"\r\n") + 2 :]
