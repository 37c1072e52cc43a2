"""Mark digests (atp_service/store/marks.py) are what Redis keeps as 8-byte integers: a
canonical signed 64-bit decimal for any event_id, the same for the same id and key, and
another with another key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from atp_service.store.marks import digest

KEYS = st.binary(min_size=16, max_size=16)


@given(st.text(min_size=1, max_size=300), KEYS)
def test_a_digest_is_a_canonical_int64(event_id: str, key: bytes) -> None:
    mark = digest(key, event_id)
    assert -(2**63) <= int(mark) < 2**63
    assert str(int(mark)) == mark  # what an intset accepts: no sign, zero or space to spare
    assert digest(key, event_id) == mark


@given(st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=50, unique=True), KEYS)
def test_ids_of_one_sku_have_distinct_digests(event_ids: list[str], key: bytes) -> None:
    assert len({digest(key, event_id) for event_id in event_ids}) == len(event_ids)


@given(st.text(min_size=1, max_size=40), KEYS, KEYS)
def test_another_key_gives_another_digest(event_id: str, key: bytes, other: bytes) -> None:
    if key != other:
        assert digest(key, event_id) != digest(other, event_id)
