"""The records of re-planned order lines, merged by the write script into a sku's hash of
lines, a key of the sku's shard written with the sku's step."""

from __future__ import annotations

import msgspec
import pytest
import redis

from atp_service.orders import LineResult, OrderResult, StoredOrder, encode_stored
from atp_service.store import keys
from atp_service.store.redis_store import RedisStore, initialize
from streams.backorders import (
    RECORD_SEPARATOR,
    Converted,
    LinePlan,
    line_field,
    merge_line_record,
    read_line_record,
)
from streams.changeset import ChangeSet, SkuWrite

pytestmark = pytest.mark.integration

_encode = msgspec.json.encode
LAYOUT = keys.SINGLE


def _write(store: RedisStore, lines: dict[str, dict[str, bytes]], offset: int) -> None:
    assert store.write(ChangeSet(offsets={"t\x1f0": offset}, lines=lines), 1_000) == []


def _record(plan: LinePlan, *conversions: Converted) -> bytes:
    converted = RECORD_SEPARATOR + _encode(list(conversions)) if conversions else b""
    return _encode(plan) + converted


def test_a_write_replaces_the_plan_and_keeps_every_conversion(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    initialize(client, LAYOUT, "test")
    store = RedisStore(client, "g", 60_000)
    # Many lines of one sku (the script works in slices), text beyond ASCII.
    names = [line_field(f"O-{n}", "1") for n in range(450)]
    claimed = LinePlan(3, "2026-12-10", "O:1:Lager-Süd:backorder#1", "Lager-Süd")
    first = Converted("O:1:Lager-Süd#1", "Lager-Süd", 2)
    _write(store, {"A": {name: _record(claimed, first) for name in names}, "B": {}}, 1)
    done = LinePlan(0, None, None, None)
    second, third = Converted("O:1:DC-1#2", "DC-1", 2), Converted("O:1:DC-2#2", "DC-2", 1)
    moved = LinePlan(3, "2026-12-12", "O:1:DC-1:backorder#2", "DC-1")
    # In one slice: a line converted again, one whose promise moved, one new line.
    news = {
        names[0]: _record(done, second, third),
        names[1]: _record(moved),
        line_field("O-new", "2"): _record(moved, second),
    }
    _write(store, {"A": news}, 2)

    stored = client.hgetall(LAYOUT.lines_key("A"))
    assert len(stored) == len(names) + 1
    for name, record in news.items():
        old = _record(claimed, first) if name in names else None
        assert stored[name.encode()] == merge_line_record(old, record)
    assert read_line_record(stored[names[0].encode()]) == (done, [first, second, third])
    assert read_line_record(stored[names[1].encode()]) == (moved, [first])
    assert read_line_record(stored[line_field("O-new", "2").encode()]) == (moved, [second])
    assert read_line_record(stored[names[449].encode()]) == (claimed, [first])

    # An allocation undone removes its line's record, and only that one.
    changes = ChangeSet(offsets={"t\x1f0": 3})
    changes.puts = [(LAYOUT.lines_key("A"), "hdel", names[0].encode())]
    assert store.write(changes, 1_000) == []
    assert client.hlen(LAYOUT.lines_key("A")) == len(names)
    assert not client.hexists(LAYOUT.lines_key("A"), names[0])
    client.close()


@pytest.mark.parametrize("shards", [1, 4])
def test_each_skus_lines_land_in_its_shard_with_its_step(redis_url: str, shards: int) -> None:
    """A consumer's write over several shards and in steps: every sku's hash of lines is a
    key of its shard, written by the script that writes the sku, and orders read them."""
    layout = keys.Layout(shards)
    client = redis.Redis.from_url(redis_url)
    initialize(client, layout, "test")
    store = RedisStore(client, "g", 60_000, layout=layout, step_skus=3)
    skus = [f"SKU-{n}" for n in range(11)]
    plan = LinePlan(0, None, None, None)
    changes = ChangeSet(offsets={"t\x1f0": 1})
    for n, sku in enumerate(skus):
        changes.skus.append(SkuWrite(sku, None, b"", None, {}, [f"e-{n}"]))
        converted = Converted(f"O-{n}:1:DC-1#1", "DC-1", 2)
        changes.lines[sku] = {line_field(f"O-{n}", "1"): _record(plan, converted)}
    assert store.write(changes, 1_000) == []

    for n, sku in enumerate(skus):
        key = layout.lines_key(sku)
        assert key.startswith(layout.prefixes[layout.shard(sku)])
        assert keys.is_lines_key(key.encode())
        assert not keys.is_lines_key(layout.sku_key(sku).encode())
        record = client.hget(key, line_field(f"O-{n}", "1"))
        assert record is not None
        assert read_line_record(record)[1] == [Converted(f"O-{n}:1:DC-1#1", "DC-1", 2)]
        backordered = LineResult("1", sku, 2, [], 2, "2026-12-10", 0)
        result = OrderResult(f"O-{n}", "web", "allocated", [backordered])
        client.set(layout.order_key(f"O-{n}"), encode_stored(StoredOrder("x", result, [])))
    found = store.order_results([f"O-{n}" for n in range(len(skus))])
    assert len(found) == len(skus)
    for n in range(len(skus)):
        (line,) = msgspec.json.decode(found[f"O-{n}"])["lines"]
        assert line["allocations"] == [
            {"location": "DC-1", "quantity": 2, "reservation_id": f"O-{n}:1:DC-1#1"}
        ]
        assert line["backordered"] == 0
    client.close()
