"""The consumer's command packer: the same bytes on the wire, large values not copied."""

from __future__ import annotations

import hiredis
import pytest
from redis.exceptions import DataError

from atp_service.store.packer import LARGE_BYTES, ChunkedPacker


def wire(chunks: list[bytes | memoryview]) -> bytes:
    return b"".join(chunks)


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "k"),
        ("SET", "k", b"v" * (LARGE_BYTES + 1)),
        (
            "EVALSHA",
            "a" * 40,
            2,
            "k1",
            "k2",
            7,
            b"x" * (LARGE_BYTES * 3),
            "",
            b"y" * 10,
            b"z" * (LARGE_BYTES + 5),
        ),
        ("HSET", "h", "f", b"w" * (LARGE_BYTES * 2)),  # a large value last
        ("SET", b"q" * (LARGE_BYTES + 1), "v"),  # and one right after the name
        ("SET", "k", b"v" * LARGE_BYTES),  # at the limit: packed with the rest
    ],
)
def test_the_bytes_on_the_wire_are_the_ones_hiredis_would_send(args: tuple[object, ...]) -> None:
    assert wire(ChunkedPacker().pack(*args)) == hiredis.pack_command(args)


def test_a_two_word_command_name_is_two_arguments() -> None:
    packed = wire(ChunkedPacker().pack("SCRIPT LOAD", "return 1"))
    assert packed == hiredis.pack_command(("SCRIPT", "LOAD", "return 1"))
    assert wire(ChunkedPacker().pack(b"CONFIG GET", "maxmemory")) == hiredis.pack_command(
        (b"CONFIG", b"GET", "maxmemory")
    )


def test_a_large_value_is_handed_on_as_it_is() -> None:
    blob = b"r" * (LARGE_BYTES * 4)
    chunks = ChunkedPacker().pack("HSET", "h", "f", blob, "g", "small")
    assert any(chunk is blob for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks) < len(blob) + 200


def test_a_bytearray_is_sent_as_its_bytes() -> None:
    assert wire(ChunkedPacker().pack("SET", "k", bytearray(b"abc"))) == hiredis.pack_command(
        ("SET", "k", b"abc")
    )


def test_a_value_redis_cannot_hold_is_a_data_error_naming_the_problem() -> None:
    with pytest.raises(DataError, match="str, int, float or bytes"):
        ChunkedPacker().pack("SET", "k", None)  # type: ignore[arg-type]
