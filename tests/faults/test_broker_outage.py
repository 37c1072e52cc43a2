"""Issue 4, fault test 4: the broker unreachable for 10 s mid-stream, then back.

The bundled Tansu keeps its data in memory only, so the outage is made with a TCP proxy:
the broker advertises the proxy's address, every client (the consumer, the test's producer)
talks through it, and "stopping the broker" closes the proxy's listening socket and every
open connection for 10 s. The consumer resumes and catches up (projection == reference);
the API answers 200 with the last values throughout, their as_of older than the outage.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from atp_service.local.services import Service, broker_binary, free_port, wait_until
from tests.conftest import READ_KEY, WRITE_KEY, Stack
from tests.faults.harness import (
    Feed,
    Paced,
    TcpProxy,
    Tracked,
    assert_exactly_once,
    assert_projection,
    assert_verify_clean,
    merged_ends,
    port_refuses,
    redis_for,
    reference,
    tail,
    wait_consumed,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 4_004
BEFORE = 3_000  # events applied before the outage
DURING = 6_000  # produced around, during and after the outage (300/s, then faster)
OUTAGE_S = 10.0
R = {"Authorization": f"Bearer {READ_KEY}"}


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[Service, TcpProxy]]:
    """A Tansu of our own that advertises the proxy's address, and the proxy."""
    real, front = free_port(), free_port()
    argv = [
        broker_binary(), "broker",
        "--listener-url", f"tcp://127.0.0.1:{real}",
        "--advertised-listener-url", f"tcp://127.0.0.1:{front}",
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    log = open(tmp_path / "broker.log", "ab")  # noqa: SIM115
    service = Service(
        "broker", real, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), argv
    )
    proxy = TcpProxy(real, front)
    try:
        wait_until(lambda: not port_refuses(real), 20, "the proxied broker")
        proxy.start()
        yield service, proxy
    finally:
        proxy.close()
        service.stop()
        log.close()


def _as_of(doc: dict[str, Any]) -> float:
    return datetime.fromisoformat(doc["as_of"].replace("Z", "+00:00")).timestamp()


def test_broker_outage_consumer_catches_up_api_serves_last_values(
    make_stack: Callable[..., Stack], proxied_broker: tuple[Service, TcpProxy]
) -> None:
    broker, proxy = proxied_broker
    stack = make_stack(bootstrap=f"127.0.0.1:{proxy.port}")
    settings = stack.settings
    client = redis_for(stack)
    feed = Feed(SEED)
    first, second = feed.take(BEFORE), feed.take(DURING)
    consumer = stack.start_consumer()
    base = stack.start_api()
    producer = Tracked(settings.kafka.bootstrap)
    for event in first:
        producer.event(settings, event)
    producer.flush()
    wait_consumed(client, stack, merged_ends(producer))
    before = reference(settings, first)
    assert_projection(client, before, " before the outage")
    watched = list(before.skus)[:50]

    def query() -> httpx.Response:
        return httpx.post(
            f"{base}/v1/availability/web/query", json={"skus": watched}, headers=R, timeout=5
        )

    last = {item["sku"]: item for item in query().json()["items"]}
    expected_last = before.expected(time.time_ns() // 1000, skus=watched)
    for sku in watched:
        for name in ("available_to_sell", "on_hand", "reserved", "atp"):
            assert last[sku][name] == expected_last[("web", sku)][name], (sku, name)

    # The stream goes on: events keep coming while the broker is away.
    flow = Paced(producer, settings, second, rate=300.0)
    flow.start()
    time.sleep(1.0)
    flow.pause.set()  # a quiet moment, so "the last values" are exactly known
    producer.flush()
    wait_consumed(client, stack, merged_ends(producer))
    last = {item["sku"]: item for item in query().json()["items"]}
    expected_last_all = reference(settings, first + second[: flow.produced]).expected(
        time.time_ns() // 1000
    )
    outage_started = time.time()
    cut = proxy.outage()
    flow.pause.clear()
    assert cut > 0, "no client was connected through the proxy"
    # An allocation while the broker is away: 503, and nothing stays reserved.
    spare = next(
        sku
        for sku in before.skus
        if sku not in watched and expected_last_all[("web", sku)]["available_to_sell"] > 0
    )
    order = {
        "order_id": "OUTAGE-1",
        "channel": "web",
        "lines": [{"line_id": "1", "sku": spare, "quantity": 1}],
    }
    pool = ThreadPoolExecutor(1)
    allocation = pool.submit(
        httpx.post,
        f"{base}/v1/allocations",
        json=order,
        headers={"Authorization": f"Bearer {WRITE_KEY}"},
        timeout=30,
    )
    assert port_refuses(proxy.port)
    served = 0
    while time.time() - outage_started < OUTAGE_S:
        reply = query()
        assert reply.status_code == 200, reply.text
        for item in reply.json()["items"]:
            # The last values, as they were; as_of older than the outage, so their age shows.
            assert item == last[item["sku"]], (
                f"{item} changed during the outage (was {last[item['sku']]})"
            )
            assert _as_of(item) < outage_started
        one = httpx.get(f"{base}/v1/availability/web/{watched[0]}", headers=R, timeout=5)
        assert one.status_code == 200 and one.json() == last[watched[0]]
        served += 1
        assert consumer.poll() is None, (
            f"the consumer exited during the outage:\n{tail(stack.logs())}"
        )
        time.sleep(0.2)
    refused = allocation.result(timeout=30)
    pool.shutdown()
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    produced_during = flow.produced
    accepted_before = proxy.accepted
    proxy.resume()
    resumed_at = time.time()
    # Served throughout (a read every 0.2 s at most; fewer when the machine is busy).
    assert served >= 10

    time.sleep(2.0)  # the stream goes on after the outage; then the rest at full speed
    flow.hurry.set()
    flow.join(60)
    assert flow.error is None and flow.produced == DURING
    producer.flush(120)
    # Events produced during the outage reached the broker only after it came back.
    assert produced_during < DURING
    during = range(BEFORE + produced_during - 10, BEFORE + produced_during)
    assert all(producer.delivered[n][3] >= resumed_at for n in during)
    wait_consumed(client, stack, merged_ends(producer), timeout=120)
    assert proxy.accepted > accepted_before, "nobody reconnected through the proxy"
    assert consumer.poll() is None, f"the consumer exited:\n{tail(stack.logs())}"
    assert len(stack.processes) == 2  # the API and the one consumer: nothing was restarted
    consumer_log = (stack.tmp / "consumer-0.log").read_text(errors="replace")
    assert f"127.0.0.1:{proxy.port}" in consumer_log and "Connection refused" in consumer_log, (
        "the consumer did not notice the outage:\n" + tail(consumer_log)
    )

    model = reference(settings, first + second)
    assert_projection(client, model, " after the outage")
    after = {item["sku"]: item for item in query().json()["items"]}
    assert any(_as_of(item) > resumed_at for item in after.values()), (
        "no value was recomputed after the outage"
    )
    gone = httpx.get(
        f"{base}/v1/allocations/OUTAGE-1",
        headers={"Authorization": f"Bearer {WRITE_KEY}"},
        timeout=5,
    )
    assert gone.status_code == 404, gone.text
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    assert broker.alive
    # (the undone allocation left only its dedupe marks behind)
    assert_exactly_once(
        stack, client, model, ignore_marks=("atp-alloc:OUTAGE-1:", "atp-release:OUTAGE-1:")
    )
    assert_verify_clean(stack)
