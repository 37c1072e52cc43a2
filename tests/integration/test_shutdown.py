"""What the API starts ends with its shutdown.

The read cache's invalidation tasks end even when a cancellation is lost: a cancel that lands just as redis-py's connection handshake finishes a write is lost on
Python 3.11 (``asyncio.wait_for`` returns the result instead of raising); the reader's loop
then ran on past the API's shutdown, and the event loop's own shutdown waited for it forever
(a hung worker, and a CI run that never finished)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
import redis.asyncio as aredis

from atp_service.app import projector_for
from atp_service.config import Settings
from atp_service.reader import AvailabilityReader
from streams.kafka import AsyncPublisher, api_producer_config

pytestmark = pytest.mark.integration


class LosesOneCancel:
    """The real client, but its PUBLISH swallows the first cancellation it receives."""

    def __init__(self, client: aredis.Redis) -> None:
        self._client = client
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def publish(self, channel: str, message: str) -> int:
        try:
            # Slow enough that the cancel lands here, not in the heartbeat's sleep.
            await asyncio.sleep(0.2)
            return int(await self._client.publish(channel, message))
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost += 1
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return 0


async def test_reader_stops_when_a_cancel_is_lost(redis_url: str, test_settings: Settings) -> None:
    client = aredis.Redis.from_url(redis_url)
    losing = LosesOneCancel(client)
    reader = AvailabilityReader(losing, projector_for(test_settings), 0.25)  # type: ignore[arg-type]
    await reader.start()
    # Each beat takes 0.25 s (0.2 in PUBLISH, then a 0.05 s sleep): 0.6 s is mid-PUBLISH.
    await asyncio.sleep(0.6)
    started = time.monotonic()
    await reader.stop()
    took = time.monotonic() - started
    tasks = [reader._task, reader._beat]
    assert losing.lost == 1  # the case under test did happen
    assert all(task is not None and task.done() for task in tasks), tasks
    assert took < 2.0
    await client.aclose()


async def test_reader_stops_promptly(redis_url: str, test_settings: Settings) -> None:
    client = aredis.Redis.from_url(redis_url)
    reader = AvailabilityReader(client, projector_for(test_settings), 0.25)
    await reader.start()
    await asyncio.sleep(0.3)
    assert reader.cache_usable  # the heartbeat went round
    started = time.monotonic()
    await reader.stop()
    assert time.monotonic() - started < 1.0
    assert reader._task is not None and reader._task.done()
    assert reader._beat is not None and reader._beat.done()
    await client.aclose()


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_closed_publisher_leaves_no_broker_threads() -> None:
    before = _os_threads()
    for _ in range(3):
        publisher = AsyncPublisher(api_producer_config("127.0.0.1:1"))  # nothing listens there
        publisher.start()
        time.sleep(0.05)
        assert _os_threads() > before  # librdkafka's threads, and our poller
        publisher.close()
    # A producer kept after close went on reconnecting to the broker, a few threads each.
    deadline = time.monotonic() + 5
    while _os_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _os_threads() <= before
