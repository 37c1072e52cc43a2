"""A stale owner of a partition (after a rebalance) must not replace the ledger rows staged
by the owner that applied the events first: against a real Redis and real ledger files."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
from confluent_kafka import TopicPartition

from atp_service.config import parse_config
from atp_service.model import projector_for
from atp_service.store import keys
from atp_service.store.redis_store import RedisStore, initialize
from streams.consumer import ConsumerLoop
from streams.ledger import Ledger
from tests.conftest import config_text
from tests.fakes import FakeConsumer, FakeProducer
from tests.integration.inprocess import TOPIC, batch, on_hand, options_for, stored_offset

pytestmark = pytest.mark.integration


def instance(redis_url: str, ledger_dir: Path) -> ConsumerLoop:
    settings = parse_config(config_text(redis_url=redis_url, ledger_dir=str(ledger_dir)))
    options = options_for(settings)
    store = RedisStore(redis.Redis.from_url(redis_url), settings.kafka.group_id, 7 * 86_400_000)
    stream = ConsumerLoop(
        FakeConsumer(),
        FakeProducer(),
        store,
        projector_for(settings),
        options,
        ledger=Ledger(ledger_dir),
    )  # type: ignore[arg-type]
    stream.on_assign(stream.consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    return stream


def ledger_rows(ledger_dir: Path) -> list[tuple[int, str]]:
    rows: list[tuple[int, str]] = []
    for path in Ledger(ledger_dir).files():
        table = pq.read_table(path)
        rows += zip(table["source_offset"].to_pylist(), table["status"].to_pylist(), strict=True)
    return sorted(rows)


@pytest.mark.parametrize("stale_end", [3, 5, 8])
def test_a_stale_owners_batch_keeps_the_applied_rows_and_adds_only_new_ones(
    redis_url: str, tmp_path: Path, stale_end: int
) -> None:
    initialize(redis.Redis.from_url(redis_url), keys.SINGLE, "test")
    owner = instance(redis_url, tmp_path / "ledger")
    stale = instance(redis_url, tmp_path / "ledger")
    owner.process(batch(0, 5))
    assert stored_offset(owner) == 5 and on_hand(owner) == 5
    # The stale owner still starts from offset 0: the same first offset as the owner's batch.
    stale.process(batch(0, stale_end))
    assert stored_offset(owner) == max(5, stale_end) and on_hand(owner) == max(5, stale_end)
    owner.flush_ledger()
    expected = [(n, "applied") for n in range(max(5, stale_end))]
    assert ledger_rows(tmp_path / "ledger") == expected
