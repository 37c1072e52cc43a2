"""Issue 4, fault test 3: 5% poison messages among good events.

Every poison message (bad JSON, wrong types, negative quantities, unknown type, unknown
channel, a 1 MB payload, ...) lands on the dead-letter topic unchanged, with its reason in
`atp-error` and its source topic/partition/offset headers; every good event is applied
(projection == reference over the good events); the consumer never exits.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Stack
from tests.faults.harness import (
    Feed,
    Tracked,
    assert_exactly_once,
    assert_projection,
    assert_verify_clean,
    iso,
    ledger_summary,
    merged_ends,
    now_us,
    read_all,
    redis_for,
    reference,
    tail,
    wait_consumed,
)
from tests.reference import ReferenceModel

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 4_003
GOOD = 4_000
POISON = round(GOOD * 5 / 95)  # 5% of all messages
ONE_MB = 1024 * 1024


def _poison_kinds(rng: random.Random) -> list[tuple[str, str, Callable[[int], bytes], str]]:
    """(name, topic kind, payload for the n-th message, a word its reason must contain)."""
    at = iso(now_us() - 3_600_000_000)

    def event(kind: str, **fields: Any) -> Callable[[int], bytes]:
        def build(n: int) -> bytes:
            body = {
                "type": kind,
                "event_id": f"poison-{n}",
                "occurred_at": at,
                "sku": f"F-{n % 200:03d}",
            }
            body.update(fields)
            return json.dumps(body).encode()

        return build

    move = {
        "location": "DC-EAST",
        "quantity": 3,
        "from_bin": None,
        "from_status": None,
        "to_bin": "B-1",
        "to_status": "available",
    }
    reserve = {"reservation_id": "P:1", "channel": "web", "location": "DC-EAST", "quantity": 1}
    inbound = {"inbound_id": "PO-P", "location": "DC-EAST", "quantity": 5, "eta": "2026-12-01"}
    count = {"location": "DC-EAST", "bin": "B-1", "status": "available", "quantity": 4}
    snap_bin = {"bin": "B-1", "status": "available", "quantity": 4}
    return [
        (
            "truncated JSON",
            "movements",
            lambda n: b'{"type": "bin_movement", "event_id": "p' + str(n).encode(),
            "JSON",
        ),
        ("not UTF-8", "reservations", lambda n: b"\xff\xfe\x00garbage" + str(n).encode(), "JSON"),
        ("a JSON array", "inbound", lambda n: f"[{n}, 2, 3]".encode(), "object"),
        (
            "quantity as text",
            "movements",
            event("bin_movement", **{**move, "quantity": "ten"}),
            "quantity",
        ),
        (
            "quantity as float",
            "movements",
            event("bin_movement", **{**move, "quantity": 1.5}),
            "quantity",
        ),
        (
            "sku as number",
            "movements",
            lambda n: json.dumps(
                {
                    "type": "bin_movement",
                    "event_id": f"poison-{n}",
                    "occurred_at": at,
                    "sku": n,
                    **move,
                }
            ).encode(),
            "sku",
        ),
        (
            "occurred_at not a timestamp",
            "inbound",
            event("inbound", **{**inbound, "occurred_at": "yesterday"}),
            "occurred_at",
        ),
        ("eta not a date", "inbound", event("inbound", **{**inbound, "eta": "soon"}), "eta"),
        (
            "missing event_id",
            "reservations",
            lambda n: json.dumps(
                {
                    "type": "reservation_released",
                    "occurred_at": at,
                    "sku": "F-001",
                    "reservation_id": "X",
                }
            ).encode(),
            "event_id",
        ),
        (
            "negative movement",
            "movements",
            event("bin_movement", **{**move, "quantity": -3}),
            "quantity",
        ),
        (
            "negative count",
            "movements",
            event("bin_count", **{**count, "quantity": -1}),
            "quantity",
        ),
        (
            "negative reservation",
            "reservations",
            event("reservation_created", **{**reserve, "quantity": -2}),
            "quantity",
        ),
        (
            "negative inbound",
            "inbound",
            event("inbound", **{**inbound, "quantity": -10}),
            "quantity",
        ),
        ("unknown type", "movements", event("teleport", location="DC-EAST"), "teleport"),
        (
            "unknown channel",
            "reservations",
            event("reservation_created", **{**reserve, "channel": "pigeon"}),
            "pigeon",
        ),
        (
            "movement with no side",
            "movements",
            event("bin_movement", location="DC-EAST", quantity=2),
            "side",
        ),
        # What a hostile or broken upstream sends: none of it may stop the consumer.
        ("nested 50,000 levels", "movements", lambda n: _nested(n, 50_000), "nested"),
        ("random binary", "reservations", lambda n: rng.randbytes(512 + n % 512), "JSON"),
        (
            "lone surrogate in sku",
            "movements",
            event("bin_movement", **move, sku="SKU-\ud800"),
            "surrogate",
        ),
        (
            "quantity beyond 64 bits",
            "movements",
            event("bin_movement", **{**move, "quantity": 2**70}),
            "quantity",
        ),
        (
            "NaN quantity",
            "inbound",
            lambda n: event("inbound", **inbound)(n).replace(b'"quantity": 5', b'"quantity": NaN'),
            "JSON",
        ),
        (
            "sku of 100,000 characters",
            "movements",
            event("bin_movement", **move, sku="S" * 100_000),
            "sku",
        ),
        # Stock snapshots (contract section 8) that cannot be applied.
        ("snapshot listing a bin twice", "movements", event("stock_snapshot", location="DC-EAST", bins=[snap_bin] * 2), "twice"),
        ("snapshot with a negative bin", "movements", event("stock_snapshot", location="DC-EAST", bins=[{**snap_bin, "quantity": -4}]), "quantity"),
        ("snapshot of 10,001 bins", "movements", event("stock_snapshot", location="DC-EAST", bins=[{**snap_bin, "bin": f"B-{i}"} for i in range(10_001)]), "10000"),
    ]  # fmt: skip


def _nested(n: int, depth: int) -> bytes:
    """A valid event but for an unknown field nested ``depth`` levels deep (about 2 bytes
    a level): unknown fields are skipped, and skipping follows the nesting."""
    head = f'{{"type": "bin_count", "event_id": "deep-{n}", "occurred_at": "2026-11-27T10:00:00Z", '
    head += '"sku": "F-001", "location": "DC-EAST", "bin": "B-1", "status": "available", "quantity": 1, "x": '
    return (head + "[" * depth + "]" * depth + "}").encode()


def test_poison_messages_are_dead_lettered_and_the_rest_applied(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    settings = stack.settings
    topics = {
        "movements": settings.topics.movements,
        "reservations": settings.topics.reservations,
        "inbound": settings.topics.inbound,
    }
    client = redis_for(stack)
    rng = random.Random(SEED)
    good = Feed(SEED).take(GOOD)
    model = reference(settings, good)
    assert not model.rejected

    kinds = _poison_kinds(rng)
    oracle = ReferenceModel(settings)
    poison: list[tuple[str, str, bytes, str]] = []  # (name, topic, payload, reason word)
    for n in range(POISON - 2):
        name, kind, build, word = kinds[n % len(kinds)]
        payload = build(n)
        assert oracle.apply(payload) == "rejected", f"{name} is not poison per the contract"
        poison.append((name, topics[kind], payload, word))
    for n in range(2):  # 1 MB payloads: a valid event padded past the size limit
        big = json.loads(kinds[3][2](10_000 + n))
        big.update(quantity=1, padding="x" * ONE_MB)
        poison.append(
            ("1 MB payload", topics[rng.choice(list(topics))], json.dumps(big).encode(), "bytes")
        )

    # Interleave: each poison message at a random point of the good stream.
    stream: list[tuple[str, Any]] = [("good", e) for e in good]
    for item in poison:
        stream.insert(rng.randrange(len(stream) + 1), ("poison", item))
    producer = Tracked(settings.kafka.bootstrap, **{"message.max.bytes": 4 * ONE_MB})
    consumer = stack.start_consumer()
    sent: dict[int, tuple[str, str, bytes, str, bytes]] = {}
    for what, item in stream:
        if what == "good":
            producer.event(settings, item)
        else:
            name, topic, payload, word = item
            key = f"F-{rng.randrange(200):03d}".encode()
            sent[producer.send(topic, key, payload)] = (name, topic, payload, word, key)
    producer.flush()
    stored = wait_consumed(client, stack, merged_ends(producer))
    assert sum(stored.values()) == GOOD + POISON
    assert consumer.poll() is None, f"the consumer exited:\n{tail(stack.logs())}"

    assert_projection(client, model, " (good events)")

    # The dead-letter topic holds every poison message exactly once, unchanged, with headers.
    dead = read_all(settings.kafka.bootstrap, settings.topics.dead_letter)
    assert len(dead) == POISON, f"{len(dead)} dead letters for {POISON} poison messages"
    by_source = {}
    for n, (name, topic, payload, word, key) in sent.items():
        where = producer.delivered[n]
        by_source[(where[0], where[1], where[2])] = (name, topic, payload, word, key)
    matched = set()
    for message in dead:
        headers = {k: v.decode() for k, v in message.headers() or []}
        source = (
            headers["atp-source-topic"],
            int(headers["atp-source-partition"]),
            int(headers["atp-source-offset"]),
        )
        assert source in by_source, (
            f"a dead letter for a message that was not poison: {source} {headers}"
        )
        assert source not in matched, f"dead-lettered twice: {source}"
        matched.add(source)
        name, topic, payload, word, key = by_source[source]
        assert message.value() == payload, f"{name}: the dead letter is not the message unchanged"
        assert message.key() == key
        assert headers["atp-error"], name
        assert word in headers["atp-error"], (
            f"{name}: reason {headers['atp-error']!r} does not say {word!r}"
        )
    assert len(matched) == POISON

    # More good events after all that: still consumed by the same process.
    later = Feed(SEED + 1, prefix="G").take(200)
    for event in later:
        model.apply(event)
        producer.event(settings, event)
    producer.flush()
    wait_consumed(client, stack, merged_ends(producer))
    time.sleep(0.2)
    assert consumer.poll() is None, f"the consumer exited:\n{tail(stack.logs())}"
    assert len(stack.processes) == 1
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    assert "Traceback" not in stack.logs()

    assert_projection(client, model, " (good events)")
    assert_exactly_once(stack, client, model)
    summary = ledger_summary(settings)
    assert summary.by_status.get("dead_letter") == POISON, summary.by_status
    assert_verify_clean(stack)
