"""A consumer's figures for operators, written to Redis every second for the API's control
tower and `atp report`: lag per partition, produce-to-visible latency, dead letters by reason
over the last hour, counters. Lives 30 s after the consumer stops writing it.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final

import msgspec

WINDOW_S: Final = 3600.0
LATENCY_SAMPLES: Final = 4096


class ConsumerSnapshot(msgspec.Struct, frozen=True):
    instance: str
    updated_at: float
    lag: dict[str, int]  # "topic/partition" -> messages behind
    visible_p50_ms: float | None
    visible_p99_ms: float | None
    dead_letters_last_hour: dict[str, int]
    consumed: int
    applied: int
    duplicates: int
    dead_lettered: int
    swept: int


@dataclass
class SnapshotBook:
    instance: str
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    dead: deque[tuple[float, str]] = field(default_factory=deque)
    lag: dict[str, int] = field(default_factory=dict)

    def visible(self, seconds: float) -> None:
        self.latencies_ms.append(seconds * 1000)

    def dead_letter(self, reason: str, at: float | None = None) -> None:
        # Reasons carry the offending value after the first ' - '; group by the rule.
        self.dead.append((at or time.time(), reason.split(" - ", 1)[0][:160]))

    def snapshot(
        self, consumed: int, applied: int, duplicates: int, dead_lettered: int, swept: int
    ) -> ConsumerSnapshot:
        now = time.time()
        while self.dead and self.dead[0][0] < now - WINDOW_S:
            self.dead.popleft()
        ordered = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

        return ConsumerSnapshot(
            instance=self.instance,
            updated_at=now,
            lag=dict(self.lag),
            visible_p50_ms=pct(0.5),
            visible_p99_ms=pct(0.99),
            dead_letters_last_hour=dict(Counter(reason for _, reason in self.dead)),
            consumed=consumed,
            applied=applied,
            duplicates=duplicates,
            dead_lettered=dead_lettered,
            swept=swept,
        )


encode_snapshot = msgspec.json.Encoder().encode
decode_snapshot = msgspec.json.Decoder(ConsumerSnapshot).decode
