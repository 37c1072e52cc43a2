"""Step one: consumed messages into a batch of typed events, and dead letters for the rest.

A message that cannot be applied (contract section 2) never stops the consumer: it becomes a
dead letter, the message unchanged with its reason and source in headers, and a ledger row.
So does a message whose decode or fold raises something unexpected (a defect, counted by
its own metric). Pure but for logging and metrics: no store, no broker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from confluent_kafka import KafkaError, Message

from streams import metrics
from streams.consumer.options import API_EVENT_PREFIXES, offset_field
from streams.events import TAGS, AnyEvent, InvalidEvent, decode
from streams.kafka import Outgoing
from streams.ledger import LedgerColumns, Source
from streams.logs import HEADER as CORRELATION_HEADER
from streams.logs import correlation_id, new_correlation_id
from streams.state import to_us

log = logging.getLogger(__name__)


@dataclass
class Batch:
    events: list[AnyEvent]
    sources: list[Source]  # parallel to events
    dead: list[Outgoing]
    dead_sources: list[tuple[Source, str]]
    offsets: dict[str, int]  # offset_field -> the next offset to consume
    # The consumer's rebalance count when these messages were consumed: a batch from an
    # earlier assignment is abandoned, not applied.
    generation: int = 0

    @property
    def size(self) -> int:
        return len(self.sources) + len(self.dead_sources)


def decode_batch(
    messages: Iterable[Message],
    *,
    max_message_bytes: int,
    known_channels: frozenset[str],
    dead_letter_topic: str,
    generation: int,
) -> Batch:
    events: list[AnyEvent] = []
    sources: list[Source] = []
    dead: list[Outgoing] = []
    dead_sources: list[tuple[Source, str]] = []
    next_offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", error)
            continue
        # Inline, not position(): this loop runs per message, and calls add up. Without an
        # error all three are set (librdkafka types them optional).
        topic: str = message.topic()  # type: ignore[assignment]
        partition: int = message.partition()  # type: ignore[assignment]
        offset: int = message.offset()  # type: ignore[assignment]
        next_offsets[topic, partition] = offset + 1
        value = message.value() or b""
        headers: list[tuple[str, str | bytes | None]] | None = message.headers()  # type: ignore[assignment]
        given = correlation_header(headers) if headers else None
        try:
            if len(value) > max_message_bytes:
                raise InvalidEvent(
                    f"message of {len(value)} bytes exceeds the limit of {max_message_bytes} bytes"
                )
            event = decode(value, known_channels)
        except InvalidEvent as exc:
            reason = exc.reason
        except Exception as exc:
            # A defect of ours, not bad input; still, one message must never stop the loop.
            reason = unexpected("decode", exc)
        else:
            events.append(event)
            sources.append((topic, partition, offset, value, given or event.correlation_id))
            continue
        cid = given or new_correlation_id()
        dead.append(dead_letter(message, reason, cid, dead_letter_topic))
        dead_sources.append(((topic, partition, offset, value, cid), reason))
        _log_dead_letter(topic, partition, offset, reason, cid)
    offsets = {offset_field(topic, partition): n for (topic, partition), n in next_offsets.items()}
    return Batch(events, sources, dead, dead_sources, offsets, generation)


def set_aside(
    messages: list[Message], batch: Batch, culprits: dict[int, Exception], dead_letter_topic: str
) -> list[Outgoing]:
    """Move the events that cannot be folded (by index, with what they raised) from the
    batch to its dead letters; returns the new dead letters."""
    by_position = {position(m): m for m in messages}
    dead: list[Outgoing] = []
    for index in sorted(culprits):
        reason = unexpected("fold", culprits[index])
        topic, partition, offset, value, given = batch.sources[index]
        cid = given or new_correlation_id()
        message = by_position[topic, partition, offset]
        dead.append(dead_letter(message, reason, cid, dead_letter_topic))
        batch.dead_sources.append(((topic, partition, offset, value, cid), reason))
        _log_dead_letter(topic, partition, offset, reason, cid)
    keep = [i for i in range(len(batch.events)) if i not in culprits]
    batch.events[:] = [batch.events[i] for i in keep]
    batch.sources[:] = [batch.sources[i] for i in keep]
    batch.dead.extend(dead)
    return dead


def dead_letter(message: Message, reason: str, cid: str, topic: str) -> Outgoing:
    """The message unchanged, with the reason and where it came from (contract section 2)."""
    source_topic, partition, offset = position(message)
    headers = [
        (CORRELATION_HEADER, cid.encode()),
        ("atp-error", reason.encode("utf-8", "replace")[:2000]),
        ("atp-source-topic", source_topic.encode()),
        ("atp-source-partition", str(partition).encode()),
        ("atp-source-offset", str(offset).encode()),
    ]
    return Outgoing(topic, message.key(), message.value() or b"", headers)


def unexpected(step: str, exc: BaseException) -> str:
    """Count and log a defect's exception; the reason its message is dead-lettered with."""
    metrics.UNEXPECTED.labels(step).inc()
    log.error(
        "unexpected %s in %s; the message is dead-lettered", type(exc).__name__, step, exc_info=exc
    )
    return f"internal error in {step}: {type(exc).__name__}"


KIT_STOCK: Final = "a kit: stock of its own counts for nothing (contract section 10)"
_STOCK_EVENTS: Final = frozenset({"bin_movement", "bin_count", "stock_snapshot"})


def ledger_rows(
    batch: Batch, duplicates: list[AnyEvent], kits: frozenset[str] = frozenset()
) -> LedgerColumns:
    """A row for every message of the batch, so each partition's offsets are contiguous.

    Status: applied; applied_by_api (the API's own reservation events, applied in the store
    when the API made them); duplicate (already applied, ignored); dead_letter (with the
    reason). A stock event applied to a kit (``kits``) says, as its reason, that it changed
    nothing a read shows.
    """
    events = batch.events
    dead = [None] * len(batch.dead_sources)
    # Column by column, each a plain comprehension with no function call per event: this
    # runs for every message of every batch.
    status = [
        "applied_by_api" if e.event_id.startswith(API_EVENT_PREFIXES) else "applied" for e in events
    ]
    if duplicates:
        repeated = {id(e) for e in duplicates}
        status = [
            "duplicate" if s == "applied" and id(e) in repeated else s
            for e, s in zip(events, status, strict=True)
        ]
    return LedgerColumns(
        sources=batch.sources + [source for source, _ in batch.dead_sources],
        event_id=[e.event_id for e in events] + dead,
        type=[TAGS[type(e)] for e in events] + dead,
        sku=[e.sku for e in events] + dead,
        location=[getattr(e, "location", None) for e in events] + dead,
        channel=[getattr(e, "channel", None) for e in events] + dead,
        quantity=[getattr(e, "quantity", None) for e in events] + dead,
        occurred_at_us=[to_us(e.occurred_at) for e in events] + dead,
        status=status + ["dead_letter"] * len(dead),
        reason=_reasons(events, status, kits) + [reason for _, reason in batch.dead_sources],
    )


def _reasons(events: list[AnyEvent], status: list[str], kits: frozenset[str]) -> list[str | None]:
    if not kits:
        return [None] * len(events)
    return [
        KIT_STOCK if e.sku in kits and s == "applied" and TAGS[type(e)] in _STOCK_EVENTS else None
        for e, s in zip(events, status, strict=True)
    ]


def correlation_header(headers: list[tuple[str, str | bytes | None]]) -> str | None:
    for key, value in headers:
        if key == CORRELATION_HEADER and value:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            return text[:128] if text.isprintable() else None
    return None


def position(message: Message) -> tuple[str, int, int]:
    # A message without an error always has all three; librdkafka types them optional.
    return str(message.topic()), int(message.partition() or 0), int(message.offset() or 0)


def _log_dead_letter(topic: str, partition: int, offset: int, reason: str, cid: str) -> None:
    token = correlation_id.set(cid)
    log.warning(
        "dead-lettered %s[%d]@%d: %s", topic, partition, offset, reason,
        extra={"source_topic": topic, "source_partition": partition, "source_offset": offset},
    )  # fmt: skip
    correlation_id.reset(token)
