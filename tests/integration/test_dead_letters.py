"""`atp dead-letters list` and `replay` (contract section 14), with a real broker and consumer.

A reservation for a channel the config does not have is dead-lettered. The channel is then
added to the config; replaying the dead letter applies the reservation, once: a second
replay changes nothing. A filter that matches nothing says so and exits 0.
"""

from __future__ import annotations

import json
import time

import pytest
import redis

from atp_service.local.config_file import Channel, ConfigFile
from atp_service.store import keys
from streams.changeset import projection_field
from tests.conftest import TEST_CHANNELS, TEST_KEYS, Stack
from tests.faults.harness import atp_cli, read_all, wait_for

pytestmark = pytest.mark.integration

AT = "2026-11-27T10:00:00Z"


def reserved(client: redis.Redis, channel: str) -> int | None:
    raw = client.hget(keys.SINGLE.sku_key("SKU-D"), projection_field(channel))
    return None if raw is None else int(json.loads(raw)["reserved"])


def test_dead_letters_are_listed_and_replayed_once_their_cause_is_fixed(stack: Stack) -> None:
    settings = stack.settings
    client = redis.Redis.from_url(settings.redis.url)
    stack.start_consumer()
    stack.produce([
        {"type": "bin_movement", "event_id": "d-1", "occurred_at": AT, "sku": "SKU-D",
         "location": "DC-EAST", "quantity": 10, "to_bin": "A1", "to_status": "available"},
        {"type": "reservation_created", "event_id": "d-2", "occurred_at": AT, "sku": "SKU-D",
         "reservation_id": "O-1:1", "channel": "pigeon", "location": "DC-EAST", "quantity": 3},
    ])  # fmt: skip
    wait_for(
        lambda: len(read_all(settings.kafka.bootstrap, settings.topics.dead_letter, 10)) == 1,
        30,
        "a dead letter",
    )

    listed = atp_cli(stack, "dead-letters", "list", "--error", "pigeon")
    assert listed.returncode == 0, listed.stderr
    assert "1 dead letters" in listed.stdout and "unknown channel 'pigeon'" in listed.stdout
    assert f"{settings.topics.reservations}[" in listed.stdout
    none = atp_cli(stack, "dead-letters", "list", "--since", "2999-01-01T00:00:00Z")
    assert "0 dead letters" in none.stdout

    # The cause fixed: the config now has the channel; the consumer restarts with it.
    stack.stop_all()
    stack.processes.clear()
    fixed = ConfigFile(
        redis_url=settings.redis.url, bootstrap=settings.kafka.bootstrap,
        ledger_dir=settings.ledger.dir, channels=[*TEST_CHANNELS, Channel("pigeon", 3, ("DC-EAST",))],
        api_keys=TEST_KEYS, group_id=settings.kafka.group_id,
        topic_prefix=settings.topics.movements.split(".")[0],
        consumer={"batch_timeout_ms": 20, "sweep_interval_ms": 100, "metrics_port": 0},
    )  # fmt: skip
    stack.config_path.write_text(fixed.text())
    stack.start_consumer()

    nothing = atp_cli(stack, "dead-letters", "replay", "--error", "no such reason")
    assert nothing.returncode == 0 and "no dead letter matches" in nothing.stdout
    for attempt in range(2):
        replayed = atp_cli(stack, "dead-letters", "replay", "--error", "pigeon")
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed 1 " in replayed.stdout
        wait_for(
            lambda: reserved(client, "pigeon") == 3,
            30,
            f"the replayed reservation applied ({attempt + 1})",
        )
    time.sleep(1.0)  # the second replay has been consumed by now; it changed nothing
    assert reserved(client, "pigeon") == 3 and reserved(client, "web") == 3

    # What was replayed: the message unchanged, to its source topic, naming its dead letter.
    again = [m for m in read_all(settings.kafka.bootstrap, settings.topics.reservations, 10)
             if dict(m.headers() or []).get("atp-replay-of") is not None]  # fmt: skip
    assert len(again) == 2
    headers = dict(again[0].headers())
    assert headers["atp-replay-of"] == b"0" and again[0].key() == b"SKU-D"
    assert json.loads(again[0].value())["event_id"] == "d-2"
