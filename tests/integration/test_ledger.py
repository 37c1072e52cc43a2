"""The ledger, `atp verify`, `atp rebuild` and `atp ledger` against real services."""

from __future__ import annotations

import json
import signal
from datetime import datetime
from typing import Any

import httpx
import pytest
import redis

from atp_service.ops.topic_reader import TopicMissing, read_to_end
from atp_service.store import keys
from streams.ledger import Ledger, LedgerColumns
from streams.state import to_us
from tests.conftest import ADMIN_KEY, READ_KEY, WRITE_KEY, Stack
from tests.faults.harness import atp_cli, lose_redis_and_rebuild
from tests.integration.helpers import now_iso, poll, receipt, reservation, shipment

pytestmark = pytest.mark.integration


def projection(client: redis.Redis) -> dict[str, Any]:
    """Every projection document without its as_of, and the stored offsets."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=keys.SKU_PATTERN, _type="hash"):
        for field, value in client.hgetall(key).items():
            if field.startswith(b"p:"):
                doc = json.loads(value)
                doc.pop("as_of")
                out[f"{key.decode()}/{field.decode()}"] = doc
    return out


@pytest.mark.redis_kinds("single", "cluster")
def test_verify_rebuild_after_redis_loss_and_resume(stack: Stack) -> None:
    consumer = stack.start_consumer()
    base = stack.start_api()
    skus = [f"L-{i}" for i in range(30)]
    events = [receipt(sku, 5 + i, "DC-EAST" if i % 2 else "DC-WEST") for i, sku in enumerate(skus)]
    events += [reservation(sku, 2, f"R-{sku}") for sku in skus[::3]]
    events += [shipment(skus[0], 1, f"R-{skus[0]}", "DC-WEST")]
    events += [{"type": "inbound", "event_id": f"i-{sku}", "occurred_at": now_iso(), "inbound_id": f"PO-{sku}",
                "sku": sku, "location": "DC-EAST", "quantity": 7, "eta": now_iso()[:10]} for sku in skus[:5]]  # fmt: skip
    stack.produce(events + events[:10])  # and some duplicates
    stack.produce([(stack.settings.topics.movements, b"L-0", b"{broken")])
    client = stack.redis()  # on a cluster, its commands reach every node
    expected_on_hand = {sku: 5 + i for i, sku in enumerate(skus)}
    expected_on_hand[skus[0]] -= 1

    def caught_up() -> bool:
        reply = httpx.post(
            f"{base}/v1/availability/web/query",
            json={"skus": skus},
            headers={"Authorization": f"Bearer {READ_KEY}"},
        )
        return {i["sku"]: i["on_hand"] for i in reply.json()["items"]} == expected_on_hand

    poll(caught_up, bool)
    allocated = httpx.post(
        f"{base}/v1/allocations",
        json={"order_id": "LEDGER-1", "channel": "web", "lines": [{"line_id": "1", "sku": "L-3", "quantity": 2}]},
        headers={"Authorization": f"Bearer {WRITE_KEY}"}, timeout=10,
    )  # fmt: skip
    assert allocated.status_code == 201
    # The API's reservation reaches the ledger through the reservations topic.
    poll(lambda: "LEDGER-1" in atp_cli(stack, "ledger", "history", "--sku", "L-3").stdout, bool)
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(20) == 0

    verified = atp_cli(stack, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    before = projection(client)
    assert len(before) == 2 * len(skus)
    offsets_key = stack.layout.offsets_key(stack.settings.kafka.group_id)
    offsets_before = client.hgetall(offsets_key)

    client.flushall()  # Redis loses everything
    assert atp_cli(stack, "verify").returncode == 1
    rebuilt = atp_cli(stack, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert projection(client) == before
    assert client.hgetall(offsets_key) == offsets_before
    assert atp_cli(stack, "verify").returncode == 0

    # The consumer resumes from the restored offsets: nothing applied twice, new events land.
    stack.start_consumer()
    stack.produce([receipt("L-1", 100, "DC-EAST")])
    doc = poll(
        lambda: httpx.get(
            f"{base}/v1/availability/web/L-1", headers={"Authorization": f"Bearer {READ_KEY}"}
        ).json(),
        lambda d: d["on_hand"] == 106,
    )
    assert doc["on_hand"] == 106


def test_verify_names_every_difference(stack: Stack) -> None:
    consumer = stack.start_consumer()
    stack.produce([receipt("V-1", 9), receipt("V-2", 4)])
    client = redis.Redis.from_url(stack.settings.redis.url)
    poll(lambda: client.exists(keys.SINGLE.sku_key("V-2")), bool)
    poll(lambda: atp_cli(stack, "verify").returncode == 0, bool, timeout=20, pause=0.5)
    consumer.send_signal(signal.SIGTERM)
    consumer.wait(20)
    key = keys.SINGLE.sku_key("V-1")
    doc = json.loads(client.hget(key, "p:web"))
    doc["available_to_sell"] = 99
    client.hset(key, "p:web", json.dumps(doc))
    result = atp_cli(stack, "verify")
    assert result.returncode == 1
    assert "V-1" in result.stdout and "available_to_sell" in result.stdout and "99" in result.stdout


def test_consumer_refuses_to_start_on_an_empty_redis_with_a_ledger(stack: Stack) -> None:
    consumer = stack.start_consumer()
    stack.produce([receipt("E-1", 3)])
    client = redis.Redis.from_url(stack.settings.redis.url)
    poll(lambda: client.exists(keys.SINGLE.sku_key("E-1")), bool)
    consumer.send_signal(signal.SIGTERM)
    consumer.wait(20)
    client.flushall()
    again = stack.start_consumer()
    assert again.wait(60) == 3
    assert "atp rebuild" in stack.logs()


def test_ledger_answers_history_and_point_in_time(stack: Stack) -> None:
    consumer = stack.start_consumer()
    stack.produce([receipt("H-1", 10, event_id="h-first")])
    client = redis.Redis.from_url(stack.settings.redis.url)
    poll(lambda: client.exists(keys.SINGLE.sku_key("H-1")), bool)
    middle = now_iso()
    stack.produce([receipt("H-1", 5, event_id="h-second")])
    poll(lambda: b'"on_hand":15' in (client.hget(keys.SINGLE.sku_key("H-1"), "p:web") or b""), bool)
    consumer.send_signal(signal.SIGTERM)
    consumer.wait(20)
    listed = atp_cli(stack, "ledger", "history", "--sku", "H-1", "--location", "DC-EAST")
    assert listed.returncode == 0
    assert "h-first" in listed.stdout and "h-second" in listed.stdout
    then = atp_cli(stack, "ledger", "at", "--channel", "web", "--sku", "H-1", "--time", middle)
    assert "available_to_sell=10" in then.stdout, then.stdout + then.stderr
    now = atp_cli(stack, "ledger", "at", "--channel", "web", "--sku", "H-1", "--time", now_iso(1))
    assert "available_to_sell=15" in now.stdout


def test_the_ledger_tools_count_rows_still_staged_in_redis_once(stack: Stack) -> None:
    """Rows staged in Redis and not yet in a file are part of the ledger; rows in both (a
    move to a file whose clean-up did not happen) count once."""
    settings = stack.settings
    events = [receipt("ST-1", 1, event_id=f"st-{n}") for n in range(3)]
    raws = [json.dumps(e).encode() for e in events]
    topic = settings.topics.movements
    rows = LedgerColumns(
        sources=[(topic, 0, n, raw, None) for n, raw in enumerate(raws)],
        event_id=[e["event_id"] for e in events], type=["bin_movement"] * 3, sku=["ST-1"] * 3,
        location=["DC-EAST"] * 3, channel=[None] * 3, quantity=[1] * 3,
        occurred_at_us=[to_us(datetime.fromisoformat(e["occurred_at"])) for e in events],
        status=["applied"] * 3, reason=[None] * 3,
    )  # fmt: skip
    ledger = Ledger(settings.ledger.dir)
    staged = ledger.stage(rows)
    first_two = LedgerColumns(**{k: v[:2] for k, v in vars(rows).items()})
    ledger.flush(ledger.stage(first_two))  # offsets 0 and 1 are in a file already
    client = redis.Redis.from_url(settings.redis.url)
    client.hset(keys.SINGLE.staged_key(0), mapping=staged)  # type: ignore[arg-type]

    listed = atp_cli(stack, "ledger", "history", "--sku", "ST-1")
    assert listed.returncode == 0, listed.stderr
    for n in range(3):
        assert listed.stdout.count(f"st-{n}") == 1, listed.stdout


def test_safety_stock_overrides_set_over_http_survive_a_loss_of_redis_data(stack: Stack) -> None:
    consumer = stack.start_consumer()
    base = stack.start_api()
    stack.produce([receipt("OV-1", 10), receipt("OV-2", 10)])
    read = {"Authorization": f"Bearer {READ_KEY}"}

    def doc(channel: str, sku: str) -> dict[str, Any]:
        reply = httpx.get(f"{base}/v1/availability/{channel}/{sku}", headers=read, timeout=5)
        assert reply.status_code == 200, reply.text
        found: dict[str, Any] = reply.json()
        found.pop("as_of")
        return found

    poll(lambda: doc("web", "OV-2"), lambda d: d["on_hand"] == 10)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    path = f"{base}/v1/channels/{{}}/safety-stock/{{}}"
    for channel, sku, quantity in (("web", "OV-1", 3), ("marketplace", "OV-2", 7),
                                   ("web", "NEW-1", 2), ("marketplace", "OV-2", 8)):  # fmt: skip
        reply = httpx.put(path.format(channel, sku), json={"quantity": quantity}, headers=admin)
        assert reply.status_code == 200, reply.text
    assert httpx.delete(path.format("marketplace", "OV-2"), headers=admin).status_code == 200
    before = {(c, s): doc(c, s) for c in ("web", "marketplace") for s in ("OV-1", "OV-2", "NEW-1")}
    assert before["web", "OV-1"]["safety_stock"] == 3
    assert before["marketplace", "OV-2"]["safety_stock"] == 5  # the override removed
    assert before["web", "NEW-1"]["safety_stock"] == 2
    lose_redis_and_rebuild(stack, consumer)
    after = {key: doc(*key) for key in before}
    assert after == before


def test_a_topic_is_read_to_its_end_when_one_batch_holds_many_messages(stack: Stack) -> None:
    """Rebuild reads the overrides topic whole; a broker may report the high watermark as
    the base offset of its last batch plus one (Tansu does), so the end is the broker's
    end-of-partition signal. Fifty messages produced together land in one batch."""
    topic = stack.settings.topics.overrides
    producer = stack.producer()
    for n in range(50):
        producer.produce(topic, key=b"k", value=str(n).encode())
    assert producer.flush(10) == 0
    values = [m.value() for m in read_to_end(stack.settings.kafka.bootstrap, topic, "test")]
    assert values == [str(n).encode() for n in range(50)]
    with pytest.raises(TopicMissing):
        list(read_to_end(stack.settings.kafka.bootstrap, "no-such-topic-here", "test"))
