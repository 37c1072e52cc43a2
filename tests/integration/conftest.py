"""Fixtures of the integration tests that start nothing themselves (services: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from atp_service.config import parse_config
from atp_service.model import projector_for
from atp_service.store import keys
from atp_service.store.redis_store import initialize
from streams.consumer import ConsumerLoop
from tests.conftest import config_text
from tests.fakes import FakeProducer
from tests.integration.inprocess import QueueConsumer, SlowStore, options_for


@pytest.fixture
def stream(redis_url: str, tmp_path: Path) -> ConsumerLoop:
    settings = parse_config(config_text(redis_url=redis_url, ledger_dir=str(tmp_path / "ledger")))
    initialize(redis.Redis.from_url(redis_url), keys.SINGLE, "test")
    options = options_for(settings)
    store = SlowStore(redis.Redis.from_url(redis_url), settings.kafka.group_id, 7 * 86_400_000)
    return ConsumerLoop(QueueConsumer([]), FakeProducer(), store, projector_for(settings), options)  # type: ignore[arg-type]
