"""`atp dead-letters list` and `atp dead-letters replay` (contract section 14).

A dead letter is an input message the consumer could not apply, unchanged, with its reason
and source in headers. Once the cause is fixed (a channel added to the config, say),
replaying produces each matching dead letter again to its source topic, with its key and
value unchanged and a header naming the dead letter it replays. Replaying twice changes
nothing: the events keep their event_ids, and the consumer applies an event_id once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from atp_service.config import Settings
from atp_service.ops.topic_reader import TopicMissing, read_to_end
from streams.kafka import Outgoing, ReliableProducer, producer_config
from streams.logs import HEADER as CORRELATION_HEADER

REPLAY_OF = "atp-replay-of"  # the dead letter's offset on the dead-letter topic
REPLAY_OF_PARTITION = "atp-replay-of-partition"


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
    try:
        messages = list(read_to_end(settings.kafka.bootstrap, topic, "dead-letters"))
    except TopicMissing:
        return  # nothing was ever dead-lettered
    for message in messages:
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:
            continue  # (read_to_end yields only messages that have both)
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
