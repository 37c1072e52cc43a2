"""The changes feed, followed by a marketplace-style sync client while events flow."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import READ_KEY, Stack
from tests.integration.helpers import poll, receipt, reservation

pytestmark = pytest.mark.integration
R = {"Authorization": f"Bearer {READ_KEY}"}


# On a single Redis, on one split in shards, and on a Redis Cluster.
@pytest.mark.redis_kinds
def test_sync_client_following_next_cursor_ends_with_the_servers_values(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    skus = [f"C-{i}" for i in range(60)]
    done = threading.Event()

    def feed() -> None:
        producer = stack.producer()
        for wave in range(6):
            events = [receipt(sku, 1 + (i + wave) % 4) for i, sku in enumerate(skus)]
            events += [reservation(sku, 1, f"R-{wave}-{sku}") for sku in skus[wave::5]]
            stack.produce(events, producer)
            producer.flush(10)
            time.sleep(0.3)
        done.set()

    threading.Thread(target=feed, daemon=True).start()
    expected_on_hand = {sku: sum(1 + (i + w) % 4 for w in range(6)) for i, sku in enumerate(skus)}

    def caught_up() -> bool:
        reply = httpx.post(f"{base}/v1/availability/web/query", json={"skus": skus}, headers=R)
        return {i["sku"]: i["on_hand"] for i in reply.json()["items"]} == expected_on_hand

    mirror: dict[str, int] = {}
    cursor: str | None = None
    pages = 0
    quiet_since = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        params = {"limit": 25, **({"cursor": cursor} if cursor else {})}
        reply = httpx.get(
            f"{base}/v1/availability/web/changes", params=params, headers=R, timeout=5
        )
        assert reply.status_code == 200, reply.text
        page = reply.json()
        pages += 1
        assert len(page["items"]) <= 25
        assert len({item["sku"] for item in page["items"]}) == len(
            page["items"]
        )  # no repeats in a page
        for item in page["items"]:
            mirror[item["sku"]] = item["available_to_sell"]
        cursor = page["next_cursor"]
        if page["items"]:
            quiet_since = None
        elif done.is_set() and caught_up():
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 0.5:
                break
        time.sleep(0.05)
    assert pages > 3
    server = httpx.post(f"{base}/v1/availability/web/query", json={"skus": skus}, headers=R).json()
    assert mirror == {item["sku"]: item["available_to_sell"] for item in server["items"]}
    # From the start of history (no cursor) every changed sku appears.
    everything: set[str] = set()
    cursor = None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{base}/v1/availability/web/changes", params=params, headers=R).json()
        if not page["items"]:
            break
        everything |= {item["sku"] for item in page["items"]}
        cursor = page["next_cursor"]
    assert everything == set(skus)


def test_changes_feed_rejects_bad_cursors_and_limits(stack: Stack) -> None:
    base = stack.start_api()
    for params in ({"cursor": "!!!"}, {"cursor": "bm90LWFuLWlk"}, {"limit": 0}, {"limit": 1001}):
        reply = httpx.get(f"{base}/v1/availability/web/changes", params=params, headers=R)
        assert reply.status_code == 400, params
        assert reply.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(f"{base}/v1/availability/nope/changes", headers=R).status_code == 404
    empty = poll(
        lambda: httpx.get(f"{base}/v1/availability/web/changes", headers=R),
        lambda r: r.status_code == 200,
    )
    assert empty.json()["items"] == []
