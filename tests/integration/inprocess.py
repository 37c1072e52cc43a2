"""A stream projector in this process, with a scripted consumer, against a real Redis:
for tests of the consumer loop's own rules (read-ahead, written states, stale owners)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from atp_service.config import Settings
from atp_service.store import keys
from atp_service.store.redis_store import RedisStore
from streams.changeset import projection_field
from streams.consumer import ConsumerLoop, ConsumerOptions, offset_field
from tests.fakes import FakeConsumer, FakeMessage

TOPIC = "wms.bin-movements"


def receipt(n: int, quantity: int = 1) -> bytes:
    return json.dumps({
        "type": "bin_movement", "event_id": f"e-{n}", "occurred_at": "2026-11-27T08:00:00Z",
        "sku": "SKU-1", "location": "DC-EAST", "quantity": quantity,
        "to_bin": "A1", "to_status": "available",
    }).encode()  # fmt: skip


class QueueConsumer(FakeConsumer):
    """Hands out queued batches from consume(), and runs a hook inside it (as librdkafka runs
    rebalance callbacks inside consume)."""

    def __init__(self, batches: list[list[FakeMessage]]) -> None:
        super().__init__()
        self.batches = batches
        self.inside_consume: Any = None
        self.failure: Exception | None = None
        self.seeks: list[tuple[str, int, int]] = []

    def seek(self, partition: Any) -> None:
        self.seeks.append((partition.topic, partition.partition, partition.offset))

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if self.inside_consume is not None:
            hook, self.inside_consume = self.inside_consume, None
            hook()
        if self.failure is not None:
            raise self.failure
        return self.batches.pop(0) if self.batches else []


class SlowStore(RedisStore):
    """A real store whose writes take a while (and can be made to fail once)."""

    delay_s = 0.2
    fail_next = False
    conflict_next = False
    fail_reads = 0  # the next this many reads fail

    def read(self, skus: Any, event_ids: Any = None) -> Any:
        if self.fail_reads:
            self.fail_reads -= 1
            raise redis.ConnectionError("redis went away")
        return super().read(skus, event_ids)

    def write(self, changes: Any, now_ms: int) -> list[str]:
        time.sleep(self.delay_s)
        if self.fail_next:
            self.fail_next = False
            raise redis.ConnectionError("redis went away")
        if self.conflict_next:  # as when the API wrote one of the skus since the read
            self.conflict_next = False
            return [changes.skus[0].sku]
        return super().write(changes, now_ms)


def batch(first: int, count: int) -> list[FakeMessage]:
    return [FakeMessage(TOPIC, 0, n, receipt(n), b"SKU-1") for n in range(first, first + count)]


def options_for(settings: Settings) -> ConsumerOptions:
    return ConsumerOptions(
        topics=(TOPIC,), dead_letter_topic="dlq", availability_topic="availability",
        reservations_topic="oms.reservations",
        allocation_updates_topic="atp.allocation-updates",
        stock_states_topic="atp.stock-states",
        known_channels=frozenset(c.name for c in settings.channels), batch_size=100,
        batch_timeout_s=0.01, sweep_interval_s=60, window_us=7 * 86_400_000_000,
        max_message_bytes=1_000_000,
    )  # fmt: skip


def on_hand(stream: ConsumerLoop) -> int:
    raw = stream.store.client.hget(keys.SINGLE.sku_key("SKU-1"), projection_field("web"))
    return int(json.loads(raw)["on_hand"]) if raw else 0


def stored_offset(stream: ConsumerLoop) -> int | None:
    return stream.store.offsets().get(offset_field(TOPIC, 0))
