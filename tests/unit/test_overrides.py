"""The overrides topic's records (atp_service/overrides.py): which change of a key wins."""

from __future__ import annotations

from atp_service.overrides import OverrideChanged, encode, latest, message_key


def change(quantity: int | None, at: int, seq: int) -> OverrideChanged:
    return OverrideChanged("safety_stock", "web", "S", quantity, at, seq)


def test_the_change_redis_took_last_wins_whatever_the_clocks_say() -> None:
    # Two API processes: the second change (seq 2) was stamped by a clock running behind.
    first, second = change(7, at=2_000, seq=1), change(3, at=1_000, seq=2)
    for order in ([first, second], [second, first]):
        assert latest(encode(c) for c in order) == {("safety_stock", "web", "S"): second}
    removed = change(None, at=3_000, seq=3)
    assert (
        latest([encode(first), encode(removed), encode(second)])[("safety_stock", "web", "S")]
        == removed
    )
    assert message_key(first) == b"safety_stock\x1fweb\x1fS"


def test_values_that_are_no_change_are_skipped() -> None:
    assert latest([b"", b"{not json", b'{"kind":"kit"}', encode(change(1, 1, 1))]) == {
        ("safety_stock", "web", "S"): change(1, 1, 1)
    }
