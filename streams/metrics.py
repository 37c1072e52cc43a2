"""Prometheus metrics of the consumer process, declared in one place."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

EVENTS: Final = Counter(
    "atp_events_total",
    "Events by type and outcome: consumed, applied, duplicate, dead_letter",
    ["type", "outcome"],
)
LAG: Final = Gauge(
    "atp_consumer_lag_messages", "Messages behind the partition's end", ["topic", "partition"]
)
BATCH_SIZE: Final = Histogram(
    "atp_consumer_batch_size",
    "Messages per consumed batch",
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 20000),
)
FOLD_SECONDS: Final = Histogram(
    "atp_fold_duration_seconds",
    "Read, fold, project and atomic write of one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
VISIBLE_SECONDS: Final = Histogram(
    "atp_event_to_visible_seconds",
    "From the message's produce time to its projection write (up to 500 messages a batch)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SWEPT: Final = Counter(
    "atp_swept_skus_total", "Skus recomputed with no event (reservation expiry, day change)"
)
CONFLICTS: Final = Counter(
    "atp_write_conflicts_total", "Batch writes refused because the API changed a sku meanwhile"
)
PUBLISHED: Final = Counter("atp_availability_events_total", "Availability events published")
EXPIRED: Final = Counter(
    "atp_reservation_expiries_total",
    "Reservations that stopped counting when their expires_at passed",
)
UNEXPECTED: Final = Counter(
    "atp_dead_letters_unexpected_total",
    "Messages dead-lettered because decoding or folding them raised an unexpected error "
    "(a defect in atp, not bad input), by the step that raised",
    ["step"],
)
REPUBLISHED: Final = Counter(
    "atp_availability_republished_total",
    "Availability events published again because the value an acknowledged one carried was "
    "no longer current (it may have landed after a newer one)",
)
