"""What the API starts ends with its shutdown.

The read cache's invalidation tasks end even when a cancellation is lost. On Python 3.11 a
cancel that lands while redis-py writes a command (``asyncio.wait_for`` in its
``send_packed_command``, e.g. during the connection handshake) is lost when the write has
just finished; the reader's loop then ran on past the API's shutdown, and the event loop's
own shutdown waited for it forever (a hung worker, and a CI run that never finished).

The publisher's producer ends too: librdkafka's threads (named ``rdk:...``) go with it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aredis

from atp_service.config import Settings
from atp_service.http.reader import AvailabilityReader
from atp_service.model import projector_for
from atp_service.store import keys
from streams.kafka import AsyncPublisher, Outgoing, ProduceFailed, api_producer_config
from tests.fakes import LosesOneCancel

pytestmark = pytest.mark.integration


async def test_reader_stops_when_a_cancel_is_lost(redis_url: str, test_settings: Settings) -> None:
    client = aredis.Redis.from_url(redis_url)
    await client.set(keys.SINGLE.marker_key(0), "test")  # the heartbeat is published only then
    try:
        losing = LosesOneCancel(client)
        reader = AvailabilityReader(losing, projector_for(test_settings), 0.25)  # type: ignore[arg-type]
        await reader.start()
        await asyncio.sleep(0.3)  # the listener subscribed
        await losing.publishing.wait()
        started = time.monotonic()
        await reader.stop()  # its first cancel lands in the PUBLISH under way
        took = time.monotonic() - started
        tasks = [reader._task, reader._beat]
        assert losing.lost == 1  # the case under test did happen
        assert all(task is not None and task.done() for task in tasks), tasks
        assert took < 2.0
    finally:
        await client.aclose()


async def test_reader_stops_promptly(redis_url: str, test_settings: Settings) -> None:
    client = aredis.Redis.from_url(redis_url)
    await client.set(keys.SINGLE.marker_key(0), "test")
    try:
        reader = AvailabilityReader(client, projector_for(test_settings), 0.25)
        await reader.start()
        await asyncio.sleep(0.3)
        assert reader.cache_usable  # the heartbeat went round
        started = time.monotonic()
        await reader.stop()
        assert time.monotonic() - started < 1.0
        assert reader._task is not None and reader._task.done()
        assert reader._beat is not None and reader._beat.done()
    finally:
        await client.aclose()


def _librdkafka_threads() -> int:
    names = (task / "comm" for task in Path("/proc/self/task").iterdir())
    count = 0
    for name in names:
        try:
            count += name.read_text().startswith("rdk:")
        except OSError:  # the thread ended meanwhile
            pass
    return count


def _settles_to(expected: int) -> int:
    deadline = time.monotonic() + 5
    while _librdkafka_threads() > expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return _librdkafka_threads()


def test_closed_publisher_leaves_no_broker_threads() -> None:
    before = _librdkafka_threads()
    publishers = []
    for _ in range(3):
        publisher = AsyncPublisher(api_producer_config("127.0.0.1:1"))  # nothing listens there
        publisher.start()
        publishers.append(publisher)  # kept referenced, as the API's allocator keeps it
    assert _librdkafka_threads() > before
    for publisher in publishers:
        publisher.close()
    assert _settles_to(before) == before


async def test_close_ends_a_send_in_flight_and_refuses_later_ones() -> None:
    before = _librdkafka_threads()
    publisher = AsyncPublisher(api_producer_config("127.0.0.1:1"))
    message = Outgoing("t.reservations", b"SKU-1", b"{}")
    sending = asyncio.create_task(publisher.send_all([message], timeout_s=30))
    await asyncio.sleep(0.2)
    assert not sending.done()  # no broker: waiting for the acknowledgement
    # close() blocks, as in the API's lifespan: the send learns its fate after.
    publisher.close(timeout_s=0.2)
    with pytest.raises(ProduceFailed):
        await asyncio.wait_for(sending, 5)
    with pytest.raises(ProduceFailed):
        await publisher.send_all([message], timeout_s=1)
    del sending
    assert _settles_to(before) == before
