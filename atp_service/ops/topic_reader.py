"""Read a topic from its start to its end as it is now: for the commands that look at a
topic whole (`atp dead-letters`, `atp rebuild`'s overrides)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

READ_TIMEOUT_S = 120.0


class TopicMissing(Exception):
    """The topic does not exist (or its metadata came back with an error)."""


def read_to_end(bootstrap: str, topic: str, purpose: str) -> Iterator[Message]:
    """Every message of ``topic`` up to the end of each partition, oldest first per
    partition. Commits nothing.

    The end is the broker's end-of-partition signal, not the high watermark alone: a
    broker may report the watermark as the base offset of its last batch plus one (Tansu
    does), which would stop the read inside that batch.

    Raises:
        TopicMissing: the topic does not exist.
    """
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"atp-{purpose}-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })  # fmt: skip
    try:
        found = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if found is None or found.error is not None:
            why = f": {found.error}" if found is not None else ""
            raise TopicMissing(f"topic {topic} does not exist{why}")
        # The partitions holding messages, until each signals its end.
        reading = set()
        for p in found.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                reading.add(p)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in reading])
        deadline = time.monotonic() + READ_TIMEOUT_S
        while reading:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"could not read {topic} to its end within {READ_TIMEOUT_S:.0f} s"
                )
            for message in consumer.consume(num_messages=500, timeout=1.0):
                partition, offset = message.partition(), message.offset()
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    reading.discard(partition or 0)
                    continue
                if error is not None or partition is None or offset is None:
                    continue
                yield message
    finally:
        consumer.close()
