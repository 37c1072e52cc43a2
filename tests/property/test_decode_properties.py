"""The event decoder over arbitrary and adversarial bytes: it returns a valid event or raises
``InvalidEvent`` with a reason, and nothing else, for any input (contract section 2: such a
message is dead-lettered and never stops the consumer)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.events import AnyEvent, InvalidEvent, decode, encode

KNOWN_CHANNELS = frozenset({"web", "b2b"})
AT = "2026-11-27T10:00:00Z"
VALID: list[dict[str, Any]] = [
    {"type": "bin_movement", "event_id": "m-1", "occurred_at": AT, "sku": "SKU-1", "location": "DC",
     "quantity": 3, "from_bin": None, "from_status": None, "to_bin": "A-1", "to_status": "available"},
    {"type": "bin_count", "event_id": "c-1", "occurred_at": AT, "sku": "SKU-1", "location": "DC",
     "bin": "A-1", "status": "available", "quantity": 7},
    {"type": "reservation_created", "event_id": "r-1", "occurred_at": AT, "reservation_id": "O:1",
     "sku": "SKU-1", "channel": "web", "location": "DC", "quantity": 2, "expires_at": None},
    {"type": "reservation_released", "event_id": "r-2", "occurred_at": AT, "reservation_id": "O:1",
     "sku": "SKU-1"},
    {"type": "inbound", "event_id": "i-1", "occurred_at": AT, "inbound_id": "PO:1", "sku": "SKU-1",
     "location": "DC", "quantity": 50, "eta": "2026-12-03"},
]  # fmt: skip

# Any code point, lone surrogates drawn often (st.characters leaves them out by default).
any_character = st.characters(exclude_categories=()) | st.characters(
    min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()
)
# JSON values of any shape: numbers beyond 64 bits, NaN and infinities (json.dumps writes
# the tokens NaN and Infinity, which JSON does not have) and strings with lone surrogates.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(alphabet=any_character),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(any_character, max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _outcome(payload: bytes) -> AnyEvent | None:
    """The decoded event, or None when it was refused; anything else fails the test."""
    try:
        event = decode(payload, KNOWN_CHANNELS)
    except InvalidEvent as exc:
        refused = exc.reason
    else:
        refused = None
    if refused is not None:
        assert refused, "an invalid event needs a reason for the atp-error header"
        refused.encode()  # the header is UTF-8 text
        return None
    # A returned event is whole: it encodes again (as the ledger does) and every text field
    # is UTF-8, as Redis keys, log lines and headers need.
    again = msgspec.json.decode(encode(event))
    assert again["type"] == json.loads(payload)["type"]
    for value in msgspec.structs.asdict(event).values():
        if isinstance(value, str):
            value.encode()
    return event


def _nested(depth: int, opener: str, closer: str) -> bytes:
    body = dict(VALID[1])
    text = json.dumps(body)[:-1] + ', "x": ' + opener * depth + closer * depth + "}"
    return text.encode()


@given(st.binary(max_size=2048))
@example(b"")
@example(b"\xff\xfe\xfd")
@example(b"\x00" * 64)
@example(_nested(50_000, "[", "]"))
@example(_nested(50_000, '{"a":', "}").replace(b'}}"', b'"'))
@example(_nested(5_000, "[", "]"))
def test_any_bytes_decode_to_an_event_or_an_invalid_event(payload: bytes) -> None:
    _outcome(payload)


@settings(max_examples=300)
@given(
    base=st.sampled_from(VALID),
    field=st.sampled_from(["sku", "event_id", "quantity", "location", "channel", "eta", "occurred_at",
                           "expires_at", "type", "extra"]),
    value=json_values,
)  # fmt: skip
def test_any_value_in_any_field_decodes_or_is_refused(
    base: dict[str, Any], field: str, value: Any
) -> None:
    body = {**base, field: value}
    # ensure_ascii writes a lone surrogate as its escape, as a broken upstream would.
    _outcome(json.dumps(body, ensure_ascii=True).encode())


@given(base=st.sampled_from(VALID), cut=st.integers(min_value=0, max_value=400))
def test_truncated_and_spliced_events_are_refused(base: dict[str, Any], cut: int) -> None:
    whole = json.dumps(base).encode()
    if cut < len(whole):
        assert _outcome(whole[:cut]) is None
    assert _outcome(whole + whole[:cut]) is None or cut == 0


def test_adversarial_inputs_each_get_a_reason() -> None:
    """The kinds a hostile upstream sends, one by one, with the word its reason holds."""
    good = json.dumps(VALID[1])
    cases = {
        b"[" * 100_000: "object",
        _nested(50_000, "[", "]"): "nested",
        good.replace('"SKU-1"', '"\\ud800"').encode(): "surrogate",
        good.replace('"SKU-1"', '"\\udfff\\ud800"').encode(): "surrogate",
        good.replace('"quantity": 7', '"quantity": 36893488147419103232').encode(): "quantity",
        good.replace('"quantity": 7', '"quantity": -36893488147419103232').encode(): "quantity",
        good.replace('"quantity": 7', '"quantity": NaN').encode(): "malformed",
        good.replace('"quantity": 7', '"quantity": Infinity').encode(): "malformed",
        good.replace('"quantity": 7', '"quantity": 1e400').encode(): "quantity",
        good.replace('"SKU-1"', '"' + "S" * 1_000_000 + '"').encode(): "length",
        good.replace('"SKU-1"', '"SKU-\xe9"').encode("latin-1"): "UTF-8",
        b"\xef\xbb\xbf" + good.encode(): "malformed",  # a byte-order mark
        good.encode() + b"\x00": "trailing",
    }
    for payload, word in cases.items():
        with pytest.raises(InvalidEvent) as refused:
            decode(payload, KNOWN_CHANNELS)
        reason = refused.value.reason
        assert word in reason, f"{payload[:60]!r}: {reason!r} does not say {word!r}"


def test_duplicate_keys_take_the_last_value() -> None:
    """What docs/events.md promises: a repeated key is not an error; the last one counts, as
    in most JSON parsers (RFC 8259 leaves it open)."""
    payload = json.dumps(VALID[1])[:-1] + ', "quantity": 9}'
    event = decode(payload.encode(), KNOWN_CHANNELS)
    assert event.quantity == 9  # type: ignore[union-attr]
