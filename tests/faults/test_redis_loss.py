"""Issue 4, fault test 5: Redis killed (kill -9) and restarted empty.

On a redis-server of the test's own (persistence off, so a restart is empty):
- while it is down, /readyz is 503 and every read (and write) is a 503 problem+json, never a
  500 or a traceback;
- with the consumer stopped, `atp rebuild` restores the exact projection and the stored
  offsets from the ledger (== the projection before the loss == the reference);
- a consumer started again resumes from the restored offsets: the events produced during
  the outage are applied once, nothing before them twice.

A second test covers a consumer that is *not* stopped: when Redis comes back empty under
it, it must not fold new events onto the empty state (it exits with code 3, asking for
`atp rebuild`), because that projection would be served as the truth.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from atp_service.local.services import Service, restart, start_redis, wait_until
from atp_service.orders import created_event_id
from atp_service.store import keys
from tests.conftest import ADMIN_KEY, READ_KEY, WRITE_KEY, Stack
from tests.faults.harness import (
    Feed,
    Tracked,
    assert_exactly_once,
    assert_projection,
    assert_verify_clean,
    atp_cli,
    input_topics,
    partition_ends,
    redis_for,
    reference,
    sku_keys,
    stored_offsets,
    tail,
    wait_consumed,
    wait_for,
)
from tests.integration.helpers import receipt

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 4_005
R = {"Authorization": f"Bearer {READ_KEY}"}
W = {"Authorization": f"Bearer {WRITE_KEY}"}
A = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class OwnRedis:
    service: Service

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.service.port}/0"

    def kill(self) -> None:
        self.service.process.kill()
        self.service.process.wait(10)

    def restart_empty(self) -> None:
        self.service = restart(self.service)
        client = redis.Redis(port=self.service.port, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: bool(client.ping()), 15, "redis-server after the restart")
            # Only the running consumer's status snapshot may be back already: it reconnects
            # at once, and that write needs no projection.
            found = [
                k
                for k in client.scan_iter(count=1000)
                if not k.decode().startswith(f"{keys.PREFIX}:consumers:")
            ]
            assert found == [], f"the restarted redis-server is not empty: {found[:5]}"
        finally:
            client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    holder = OwnRedis(start_redis(tmp_path / "own-redis"))
    yield holder
    holder.service.stop()


def _projection(client: redis.Redis) -> dict[str, Any]:
    """Every projection document (without as_of) by key and field."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=keys.SKU_PATTERN, count=1000, _type="hash"):
        for name, value in client.hgetall(key).items():
            if name.startswith(b"p:"):
                doc = json.loads(value)
                doc.pop("as_of")
                out[f"{key.decode()}/{name.decode()}"] = doc
    return out


def _assert_problem_503(reply: httpx.Response, what: str) -> None:
    assert reply.status_code == 503, f"{what}: {reply.status_code} {reply.text[:500]}"
    assert reply.headers["content-type"].startswith("application/problem+json"), what
    body = reply.json()
    assert body["status"] == 503, what
    assert "Traceback" not in reply.text and "exceptions" not in reply.text, what


def test_redis_loss_503s_then_rebuild_restores_and_consumer_resumes(
    make_stack: Callable[..., Stack], own_redis: OwnRedis
) -> None:
    stack = make_stack(redis_url=own_redis.url)
    settings = stack.settings
    feed = Feed(SEED)
    first, during = feed.take(3_000), feed.take(1_000)
    consumer = stack.start_consumer()
    base = stack.start_api()
    client = redis_for(stack)
    producer = Tracked(settings.kafka.bootstrap)
    for event in first:
        producer.event(settings, event)
    producer.flush()
    wait_consumed(client, stack, partition_ends(settings.kafka.bootstrap, input_topics(settings)))
    model = reference(settings, first)
    assert_projection(client, model, " before the loss")

    # A few allocations: reservations the API made (ledgered through the reservations topic).
    skus = sorted(model.skus)
    stock = httpx.post(
        f"{base}/v1/availability/web/query", json={"skus": skus}, headers=R, timeout=10
    ).json()["items"]
    orders = [item["sku"] for item in stock if item["available_to_sell"] >= 2][:5]
    assert len(orders) == 5
    for n, sku in enumerate(orders):
        body = {
            "order_id": f"LOSS-{n}",
            "channel": "web",
            "lines": [{"line_id": "1", "sku": sku, "quantity": 2}],
        }
        reply = httpx.post(f"{base}/v1/allocations", json=body, headers=W, timeout=10)
        assert reply.status_code == 201, reply.text
        for held in reply.json()["lines"][0]["allocations"]:
            model.apply({
                "type": "reservation_created", "event_id": created_event_id(held["reservation_id"]),
                "occurred_at": "2026-01-01T00:00:00Z", "sku": sku, "reservation_id": held["reservation_id"],
                "channel": "web", "location": held["location"], "quantity": held["quantity"],
            })  # fmt: skip
    wait_consumed(client, stack, partition_ends(settings.kafka.bootstrap, input_topics(settings)))
    assert_projection(client, model, " after the allocations")
    before = _projection(client)
    offsets_before = stored_offsets(client, settings)
    assert len(before) == 2 * len(model.skus)

    # Redis dies. The API says so: 503 problem+json everywhere, never a 500.
    own_redis.kill()
    wait_for(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 503, 10, "/readyz 503")
    time.sleep(0.5)  # past the read cache's staleness bound
    sku = skus[0]
    for _ in range(3):
        _assert_problem_503(httpx.get(f"{base}/readyz", timeout=5), "readyz")
        _assert_problem_503(
            httpx.get(f"{base}/v1/availability/web/{sku}", headers=R, timeout=10),
            "GET availability",
        )
        _assert_problem_503(
            httpx.get(f"{base}/v1/availability/marketplace/NEVER-SEEN", headers=R, timeout=10),
            "GET unseen sku",
        )
        _assert_problem_503(
            httpx.post(
                f"{base}/v1/availability/web/query", json={"skus": skus[:20]}, headers=R, timeout=10
            ),
            "POST query",
        )
        _assert_problem_503(
            httpx.get(f"{base}/v1/availability/web/changes", headers=R, timeout=10), "GET changes"
        )
        order = {
            "order_id": "DOWN-1",
            "channel": "web",
            "lines": [{"line_id": "1", "sku": sku, "quantity": 1}],
        }
        _assert_problem_503(
            httpx.post(f"{base}/v1/allocations", json=order, headers=W, timeout=10),
            "POST allocation",
        )
        _assert_problem_503(
            httpx.get(f"{base}/v1/allocations/LOSS-0", headers=W, timeout=10), "GET allocation"
        )
        _assert_problem_503(
            httpx.put(
                f"{base}/v1/channels/web/safety-stock/{sku}",
                json={"quantity": 3},
                headers=A,
                timeout=10,
            ),
            "PUT safety stock",
        )
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200

    # Events keep arriving; the consumer cannot apply them and is stopped (the runbook).
    for event in during:
        producer.event(settings, event)
    producer.flush()
    time.sleep(0.5)
    assert consumer.poll() is None, (
        f"the consumer gave up while Redis was down:\n{tail(stack.logs())}"
    )
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0, tail(stack.logs())

    own_redis.restart_empty()
    # Redis answers again but holds no projection: 503 problem+json, never zeros
    # (contract section 4), until `atp rebuild` restored it.
    wait_for(
        lambda: "projection-not-ready" in httpx.get(f"{base}/readyz", timeout=5).text,
        20,
        "/readyz saying the projection is lost",
    )
    time.sleep(0.5)  # past the read cache's staleness bound
    _assert_problem_503(
        httpx.get(f"{base}/v1/availability/web/{sku}", headers=R, timeout=10), "GET after loss"
    )
    assert "Traceback" not in stack.logs(), tail(stack.logs(), 80)

    client = redis_for(stack)
    lost = atp_cli(stack, "verify")
    assert lost.returncode == 1, "atp verify did not notice the loss"
    rebuilt = atp_cli(stack, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    wait_for(
        lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 20, "/readyz 200 again"
    )
    restored = httpx.get(f"{base}/v1/availability/web/{sku}", headers=R, timeout=10).json()
    assert restored["on_hand"] > 0, restored
    assert _projection(client) == before
    assert stored_offsets(client, settings) == offsets_before
    assert_projection(client, model, " after atp rebuild")
    assert_verify_clean(stack)

    # The consumer resumes from the restored offsets: the outage's events once, nothing twice.
    consumer = stack.start_consumer()
    wait_consumed(client, stack, partition_ends(settings.kafka.bootstrap, input_topics(settings)))
    for event in during:
        model.apply(event)
    assert_projection(client, model, " after resuming")
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    assert "LedgerAhead" not in stack.logs()
    assert_exactly_once(stack, client, model)
    assert_verify_clean(stack)


def test_consumer_running_through_the_loss_does_not_fold_onto_an_empty_redis(
    make_stack: Callable[..., Stack], own_redis: OwnRedis
) -> None:
    """Redis comes back empty under a running consumer, and an event arrives.

    Folding it onto the empty state would publish a projection built from that one event
    (on_hand 1 where the truth is 11) and serve it as the truth until someone notices.
    The consumer must refuse instead: exit with code 3 naming `atp rebuild`, as it does
    at start-up (streams.consumer.LedgerAhead).
    """
    stack = make_stack(redis_url=own_redis.url)
    consumer = stack.start_consumer()
    base = stack.start_api()
    stack.produce(
        [receipt("LOSS-A", 10, event_id="loss-a1"), receipt("LOSS-B", 5, event_id="loss-b1")]
    )
    client = redis_for(stack)
    wait_for(
        lambda: client.exists(keys.SINGLE.sku_key("LOSS-A"), keys.SINGLE.sku_key("LOSS-B")) == 2,
        30,
        "the first events applied",
    )

    own_redis.kill()
    stack.produce([receipt("LOSS-A", 1, event_id="loss-a2")])  # the truth is now on_hand 11
    time.sleep(1.0)
    own_redis.restart_empty()
    client = redis_for(stack)

    deadline = time.monotonic() + 15
    while consumer.poll() is None and not sku_keys(client) and time.monotonic() < deadline:
        time.sleep(0.1)
    written = {
        sku: json.loads(client.hget(keys.SINGLE.sku_key(sku), "p:web") or b"null")
        for sku in sku_keys(client)
    }
    served = httpx.get(f"{base}/v1/availability/web/LOSS-A", headers=R, timeout=5).json()
    assert not written, (
        f"the consumer folded onto the emptied Redis and wrote {written} "
        f"(the API now serves LOSS-A as {served.get('on_hand')} on hand, the truth is 11); "
        f"consumer exit code {consumer.poll()}, offsets now {stored_offsets(client, stack.settings)}"
    )
    deadline = time.monotonic() + 15
    while consumer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert consumer.poll() == 3, (
        f"the consumer did not refuse (exit code {consumer.poll()}):\n{tail(stack.logs())}"
    )
    assert "atp rebuild" in stack.logs()
    assert not sku_keys(client)
