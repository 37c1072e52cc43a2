"""The consumer's last guard: a message whose decode or fold raises an unexpected error (a
defect in atp, not bad input) is dead-lettered with the exception's type as its reason and
counted apart; the rest of its batch is applied and the loop goes on.

The defect is injected into the real fold for one sku, against a real Redis.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

import streams.consumer.batch
from atp_service.store import keys
from streams import fold as fold_module
from streams.changeset import projection_field
from streams.consumer import ConsumerLoop
from streams.events import BinMovement
from tests.fakes import FakeMessage
from tests.integration.inprocess import TOPIC, on_hand, stored_offset

pytestmark = pytest.mark.integration


def _receipt(n: int, sku: str) -> FakeMessage:
    value = json.dumps({
        "type": "bin_movement", "event_id": f"e-{n}", "occurred_at": "2026-11-27T08:00:00Z",
        "sku": sku, "location": "DC-EAST", "quantity": 1, "to_bin": "A1", "to_status": "available",
    }).encode()  # fmt: skip
    return FakeMessage(TOPIC, 0, n, value, sku.encode())


def _unexpected(step: str) -> float:
    return REGISTRY.get_sample_value("atp_dead_letters_unexpected_total", {"step": step}) or 0.0


@pytest.fixture
def defect_for_sku_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding a movement of sku BUG with quantity 1 at offset 3 raises, as a defect would."""
    real = fold_module._APPLY[BinMovement]

    def broken(work: Any, event: BinMovement, now_us: int) -> None:
        if event.sku == "BUG" and event.event_id == "e-3":
            raise ZeroDivisionError("a defect")
        real(work, event, now_us)

    monkeypatch.setitem(fold_module._APPLY, BinMovement, broken)


def test_an_event_the_fold_cannot_take_is_dead_lettered_and_the_rest_applied(
    stream: ConsumerLoop, defect_for_sku_bug: None
) -> None:
    before = _unexpected("fold")
    messages = [_receipt(n, "BUG" if n in (2, 3, 4) else "SKU-1") for n in range(6)]
    stream.process(messages, read_ahead=True)
    assert stored_offset(stream) == 6
    assert on_hand(stream) == 3  # offsets 0, 1 and 5
    dead = [m for m in stream.producer.sent if m.topic == "dlq"]  # type: ignore[attr-defined]
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["atp-error"] == b"internal error in fold: ZeroDivisionError"
    assert headers["atp-source-offset"] == b"3"
    assert dead[0].value == messages[3].value()
    assert _unexpected("fold") == before + 1
    assert stream.stats.applied == 5 and stream.stats.dead_lettered == 1
    # BUG's other two receipts were applied around the one set aside.
    raw = stream.store.client.hget(keys.SINGLE.sku_key("BUG"), projection_field("web"))
    assert json.loads(raw)["on_hand"] == 2


def test_an_event_the_decoder_cannot_take_is_dead_lettered(
    stream: ConsumerLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = streams.consumer.batch.decode

    def broken(value: bytes, known: Any = None) -> Any:
        if b'"e-1"' in value:
            raise KeyError("a defect")
        return real(value, known)

    monkeypatch.setattr(streams.consumer.batch, "decode", broken)
    before = _unexpected("decode")
    stream.process([_receipt(n, "SKU-1") for n in range(3)])
    assert stored_offset(stream) == 3 and on_hand(stream) == 2
    dead = [m for m in stream.producer.sent if m.topic == "dlq"]  # type: ignore[attr-defined]
    assert [dict(m.headers)["atp-error"] for m in dead] == [b"internal error in decode: KeyError"]
    assert _unexpected("decode") == before + 1


def test_a_defect_met_while_folding_ahead_is_counted_once(
    stream: ConsumerLoop, defect_for_sku_bug: None
) -> None:
    """The batch read ahead is folded during the previous write, and again in its turn:
    its culprit is dead-lettered and counted once."""
    before = _unexpected("fold")
    stream.consumer.batches = [[_receipt(n, "BUG") for n in (3, 4)]]  # type: ignore[attr-defined]
    stream.process([_receipt(n, "SKU-1") for n in range(3)], read_ahead=True)
    ahead = stream.take_ahead()
    assert ahead is not None
    messages, batch = ahead
    stream.process(messages, batch, read_ahead=True)
    assert stored_offset(stream) == 5
    assert _unexpected("fold") == before + 1
    dead = [m for m in stream.producer.sent if m.topic == "dlq"]  # type: ignore[attr-defined]
    assert [dict(m.headers)["atp-source-offset"] for m in dead] == [b"3"]
