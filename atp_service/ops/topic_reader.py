"""Read a topic from its start to its end as it is now: for the commands that look at a
topic whole (`atp dead-letters`, `atp rebuild`'s overrides)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

READ_TIMEOUT_S = 120.0


def read_to_end(bootstrap: str, topic: str, purpose: str) -> Iterator[Message]:
    """Every message of ``topic`` up to the end each partition had when the read began,
    oldest first per partition; nothing when the topic does not exist. Commits nothing."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"atp-{purpose}-{uuid.uuid4().hex[:8]}",
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
                yield message
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
    finally:
        consumer.close()
