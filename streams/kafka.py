"""librdkafka configuration and a producer that does not give up on a message.

Safety settings (manual commits, idempotence, acks=all) are forced here, not left to the
environment.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

log = logging.getLogger(__name__)

# A poison message of up to this size must still fit on the dead-letter topic unchanged.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def consumer_config(bootstrap: str, group_id: str, session_timeout_ms: int) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(500, session_timeout_ms // 5),
        "fetch.max.bytes": MAX_MESSAGE_BYTES * 2,
        "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
        "reconnect.backoff.max.ms": 2000,
        "isolation.level": "read_committed",
        # Brokers (Tansu at least) hold a fetch up to 500 ms by default waiting for data;
        # freshness is the product, so ask for what is there after 10 ms.
        "fetch.wait.max.ms": 10,
    }


def producer_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        # Keys hash as Java clients, Kafka Connect and kafka-python hash them (murmur2), so
        # a sku lands on the partition its other producers use (librdkafka's default differs).
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "message.max.bytes": MAX_MESSAGE_BYTES + 65536,
        "reconnect.backoff.max.ms": 2000,
    }


def api_producer_config(bootstrap: str) -> dict[str, Any]:
    """The API waits for acknowledgements inline: fail fast so it can undo and answer 503."""
    return {
        **producer_config(bootstrap),
        "linger.ms": 0,
        "message.timeout.ms": 4000,
        "socket.connection.setup.timeout.ms": 2000,
    }


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


class ReliableProducer:
    """Produce a set of messages and return only once the broker acknowledged every one.

    A message that fails (broker down, timeout) is produced again, with backoff, until it
    is acknowledged or ``should_stop`` says to give up (then it raises, and the caller does
    not commit, so the input is consumed again).
    """

    def __init__(self, producer: Producer, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.producer = producer
        self.should_stop = should_stop

    def send_all(self, messages: Sequence[Outgoing], timeout_s: float | None = None) -> None:
        pending = list(messages)
        delay = 0.1
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            failed: list[Outgoing] = []
            for item in pending:
                self._produce(item, _reporter(item, failed))
            remaining = self.producer.flush(30.0)
            if remaining:
                # Still queued after the flush timeout: their callbacks have not fired; keep
                # flushing rather than producing them twice.
                while self.producer.flush(5.0):
                    self._check_give_up(deadline)
            if not failed:
                return
            log.warning("redelivering %d messages the broker did not acknowledge", len(failed))
            pending = failed
            self._check_give_up(deadline)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _produce(
        self, item: Outgoing, callback: Callable[[KafkaError | None, Message], None]
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    item.topic,
                    value=item.value,
                    key=item.key,
                    headers=list(item.headers) or None,
                    on_delivery=callback,
                )
                return
            except BufferError:
                self.producer.poll(0.1)

    def _check_give_up(self, deadline: float | None) -> None:
        if self.should_stop() or (deadline is not None and time.monotonic() > deadline):
            raise ProduceFailed("the broker did not acknowledge the messages in time")


def _reporter(
    item: Outgoing, failed: list[Outgoing]
) -> Callable[[KafkaError | None, Message], None]:
    def report(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(item)

    return report


class ProduceFailed(Exception):
    """Messages could not be delivered; nothing after them may be committed."""


class AsyncPublisher:
    """Publish from asyncio and await exactly one's own acknowledgements.

    A shared producer's ``flush()`` waits for every outstanding message, so concurrent
    requests would queue behind each other; here each message has its own future, resolved
    from the delivery callback run by a polling thread. librdkafka retries (idempotently)
    until ``message.timeout.ms``; a message still failing then fails the call.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.producer: Producer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Create the producer now (it connects in the background)."""
        self._ensure()

    def _ensure(self) -> Producer:
        with self._lock:
            if self._closed:
                # A new producer now would never be polled (and would outlive us).
                raise ProduceFailed("the publisher is closed")
            if self.producer is None:
                self.producer = Producer(self.config)
                self._thread = threading.Thread(
                    target=self._poll, name="atp-publisher", daemon=True
                )
                self._thread.start()
            return self.producer

    def _poll(self) -> None:
        while not self._stop.is_set():
            assert self.producer is not None
            self.producer.poll(0.05)

    async def send_all(self, messages: Sequence[Outgoing], timeout_s: float) -> None:
        if not messages:
            return
        producer = self._ensure()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[KafkaError | None]] = []
        for item in messages:
            future: asyncio.Future[KafkaError | None] = loop.create_future()

            def delivered(
                err: KafkaError | None,
                _msg: Message,
                future: asyncio.Future[KafkaError | None] = future,
            ) -> None:
                loop.call_soon_threadsafe(_settle, future, err)

            while True:
                try:
                    producer.produce(
                        item.topic, value=item.value, key=item.key,
                        headers=list(item.headers) or None, on_delivery=delivered,
                    )  # fmt: skip
                    break
                except BufferError:
                    await asyncio.sleep(0.005)
            futures.append(future)
        # One deadline over the futures themselves (no task or gather per call: this is on
        # every allocation's path).
        errors: list[KafkaError | None] = []
        try:
            async with asyncio.timeout(timeout_s):
                for future in futures:
                    errors.append(await future)
        except TimeoutError:
            for future in futures:
                future.cancel()
            raise ProduceFailed("the broker did not acknowledge in time") from None
        failed = [e for e in errors if e is not None]
        if failed:
            raise ProduceFailed(f"the broker refused {len(failed)} message(s): {failed[0]}")

    def close(self, timeout_s: float = 5.0) -> None:
        """Wait up to ``timeout_s`` for what is in flight, then end the producer and its
        librdkafka threads (kept, they went on reconnecting after the API stopped). A send
        still waiting then fails (ProduceFailed), and so does any send after."""
        with self._lock:
            self._closed = True
            producer = self.producer
        if producer is not None:
            producer.flush(timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.producer = None  # after the poller stopped: it reads this attribute
        if producer is not None:
            producer.purge()
            producer.poll(0)  # the purged messages' callbacks: their sends fail now
            # Explicit where the client has it (confluent-kafka 2.16 does): a send's frame
            # or traceback may still hold a reference, which would keep the threads alive.
            close = getattr(producer, "close", None)
            if close is not None:
                close()


def _settle(future: asyncio.Future[KafkaError | None], err: KafkaError | None) -> None:
    if not future.done():
        future.set_result(err)
