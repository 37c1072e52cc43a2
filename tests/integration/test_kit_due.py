"""How a kit follows components kept in other shards, against a real Redis split in 4
shards: every write of a component counts the kit due in the component's shard, a sweep
forgets the count only if no write came after it read it, and a change of a kit's record
leaves its components naming exactly the kits they are part of, whatever order two
changes' steps land in."""

from __future__ import annotations

import time

import pytest
import redis

from allocation.kits import KitComponent
from atp_service.store import keys
from atp_service.store.kit_records import _MEMBERS, _RECORD, KitRecord, KitRecords, _put_calls
from atp_service.store.redis_store import RedisStore, initialize
from tests.integration.helpers import WINDOW_MS, receipt_write

pytestmark = pytest.mark.integration

LAYOUT = keys.Layout(4)
# A kit and two components, each in a shard of its own.
KIT, A, B = "KIT-D", "KD-A", "KD-B"


@pytest.fixture
def store(redis_url: str) -> RedisStore:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    initialize(client, LAYOUT, "test")
    assert len({LAYOUT.shard(s) for s in (KIT, A, B)}) == 3
    return RedisStore(client, "g", WINDOW_MS, LAYOUT)


def named_by(store: RedisStore, component: str) -> set[str]:
    found = store.client.hkeys(LAYOUT.kits_of_key(component))
    return {kit.decode() for kit in found}


def write(store: RedisStore, redis_url: str, sku: str, event_id: str) -> None:
    now_ms = time.time_ns() // 1_000_000
    assert not store.write(receipt_write(redis_url, sku, [event_id], now_ms), now_ms)


def test_a_kit_stays_due_while_its_components_are_written_after_the_sweep_read_it(
    store: RedisStore, redis_url: str
) -> None:
    records = store.kit_records
    records.put(KIT, KitRecord(KIT, (KitComponent(A, 1), KitComponent(B, 2)), "api", 1), 0)
    write(store, redis_url, A, "e-1")
    write(store, redis_url, B, "e-2")
    due = store.kits_due(100)
    assert sorted((d.shard, d.kit, d.writes) for d in due) == sorted(
        [(LAYOUT.shard(A), KIT, 1), (LAYOUT.shard(B), KIT, 1)]
    )
    write(store, redis_url, A, "e-3")  # after the sweep read the counts
    store.kits_computed(due)
    (left,) = store.kits_due(100)
    assert (left.shard, left.kit, left.writes) == (LAYOUT.shard(A), KIT, 2)
    store.kits_computed([left])
    assert store.kits_due(100) == []


def test_a_changed_record_leaves_its_components_naming_exactly_their_kits(
    store: RedisStore, redis_url: str
) -> None:
    records = store.kit_records
    records.put(KIT, KitRecord(KIT, (KitComponent(A, 1), KitComponent(B, 1)), "api", 1), 0)
    assert named_by(store, A) == named_by(store, B) == {KIT}
    records.put(KIT, KitRecord(KIT, (KitComponent(A, 1),), "api", 2), 0)
    assert (named_by(store, A), named_by(store, B)) == ({KIT}, set())
    write(store, redis_url, B, "e-1")
    assert store.kits_due(100) == []  # B is no longer part of the kit
    records.put(KIT, None, 0)
    assert named_by(store, A) == set()
    assert records.all() == {}


def test_a_late_step_of_an_older_change_never_unnames_a_newer_ones_component(
    store: RedisStore,
) -> None:
    """Change 1 drops B from the kit; change 2, read after 1's record landed, puts B back.
    Change 1's last step (forget B) lands after change 2's first (name B): B must still
    name the kit, as the record in force lists it."""
    client = store.client
    records = KitRecords(client, LAYOUT)
    members = client.register_script(_MEMBERS)
    set_record = client.register_script(_RECORD)
    both = KitRecord(KIT, (KitComponent(A, 1), KitComponent(B, 1)), "api", 1)
    records.put(KIT, both, 0)
    only_a = KitRecord(KIT, (KitComponent(A, 1),), "api", 2)

    raw, version = records._read(KIT)
    first = _put_calls(LAYOUT, KIT, raw, version, only_a, 0)
    for key_list, args in first.name:
        members(keys=key_list, args=args)
    assert int(set_record(keys=first.record[0], args=first.record[1]))
    raw, version = records._read(KIT)
    second = _put_calls(LAYOUT, KIT, raw, version, both, 0)
    for key_list, args in second.name:
        members(keys=key_list, args=args)
    for key_list, args in first.forget:  # late
        members(keys=key_list, args=args)
    assert int(set_record(keys=second.record[0], args=second.record[1]))
    assert named_by(store, B) == {KIT}
    assert records.of([KIT])[KIT].components == both.components
