"""`atp dead-letters list` and `atp dead-letters replay` (contract section 14).

A dead letter is an input message the consumer could not apply, unchanged, with its reason
and source in headers. Once the cause is fixed (a channel added to the config, say),
replaying produces each matching dead letter again to its source topic, with its key and
value unchanged and a header naming the dead letter it replays. Replaying twice changes
nothing: the events keep their event_ids, and the consumer applies an event_id once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from atp_service.config import Settings
from streams.kafka import Outgoing, ReliableProducer, producer_config
from streams.logs import HEADER as CORRELATION_HEADER

REPLAY_OF = "atp-replay-of"  # the dead letter's offset on the dead-letter topic
REPLAY_OF_PARTITION = "atp-replay-of-partition"
READ_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    at: datetime | None  # when it was dead-lettered (the message's timestamp)
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def error(self) -> str:
        return self.headers.get("atp-error", "")

    @property
    def source(self) -> str:
        h = self.headers
        return f"{h.get('atp-source-topic', '?')}[{h.get('atp-source-partition', '?')}]@{h.get('atp-source-offset', '?')}"


def read(
    settings: Settings, since: datetime | None = None, error: str | None = None
) -> list[DeadLetter]:
    """Every dead letter on the topic now, oldest first per partition, that was written at
    or after ``since`` and whose reason contains ``error``."""
    return [
        d
        for d in _all(settings)
        if (since is None or (d.at is not None and d.at >= since))
        and (error is None or error in d.error)
    ]


def replay(settings: Settings, letters: list[DeadLetter]) -> int:
    """Produce each dead letter again to its source topic; returns how many, once the broker
    acknowledged all of them."""
    outgoing = []
    for d in letters:
        source = d.headers.get("atp-source-topic")
        if not source:
            continue  # not one of ours: nothing says where it came from
        headers = [
            (REPLAY_OF, str(d.offset).encode()),
            (REPLAY_OF_PARTITION, str(d.partition).encode()),
        ]
        if CORRELATION_HEADER in d.headers:
            headers.append((CORRELATION_HEADER, d.headers[CORRELATION_HEADER].encode()))
        outgoing.append(Outgoing(source, d.key, d.value, headers))
    if outgoing:
        producer = Producer(producer_config(settings.kafka.bootstrap))
        ReliableProducer(producer).send_all(outgoing, timeout_s=60)
    return len(outgoing)


def print_list(console: Console, letters: list[DeadLetter]) -> None:
    table = Table(title=f"{len(letters)} dead letters")
    for column in ("partition", "offset", "dead-lettered at", "source", "error"):
        table.add_column(column)
    for d in letters:
        at = d.at.isoformat(timespec="seconds") if d.at else "?"
        table.add_row(str(d.partition), str(d.offset), at, d.source, d.error)
    console.print(table)


def _all(settings: Settings) -> Iterator[DeadLetter]:
    topic = settings.topics.dead_letter
    consumer = Consumer({
        "bootstrap.servers": settings.kafka.bootstrap,
        "group.id": f"atp-dead-letters-{uuid.uuid4().hex[:8]}",  # reads only, commits nothing
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })  # fmt: skip
    try:
        found = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if found is None or found.error is not None:
            return
        ends = {}
        for p in found.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + READ_TIMEOUT_S
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"could not read {topic} to its end within {READ_TIMEOUT_S:.0f} s"
                )
            for message in consumer.consume(num_messages=500, timeout=1.0):
                partition, offset = message.partition(), message.offset()
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    ends.pop(partition or 0, None)
                    continue
                if error is not None or partition is None or offset is None:
                    continue
                if offset >= ends.get(partition, 0):
                    ends.pop(partition, None)
                    continue
                kind, stamp = message.timestamp()
                raw: list[tuple[str, bytes | str | None]] = message.headers() or []  # type: ignore[assignment]
                headers = {
                    k: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")
                    for k, v in raw
                }
                yield DeadLetter(
                    partition=partition,
                    offset=offset,
                    at=datetime.fromtimestamp(stamp / 1000, UTC) if kind and stamp > 0 else None,
                    key=message.key(),
                    value=message.value() or b"",
                    headers=headers,
                )
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
    finally:
        consumer.close()
