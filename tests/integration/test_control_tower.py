"""The control tower: `/ui` in a real headless browser (Debian's chromium driven by selenium),
the JSON endpoints behind it (`/v1/ops/summary`, `/v1/ops/sku/{sku}`), and `atp report`.

All against the real stack: redis-server, the broker, `atp consume` and `atp serve`.
The browser test saves a screenshot to tests/artifacts/control-tower.png (git-ignored).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aredis
from rich.console import Console

from atp_service.config import parse_config
from atp_service.model import projector_for
from atp_service.ops.report import run_report
from atp_service.ops.tower import gather_summary
from atp_service.store import keys
from streams.changeset import projection_field
from streams.state import BinStock, Reservation, SkuState, dump_state, to_us
from tests.conftest import ADMIN_KEY, READ_KEY, WRITE_KEY, Stack, config_text
from tests.integration.helpers import availability, now_iso, poll, receipt, reservation

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TODAY = datetime.now(UTC).date()


def inbound(sku: str, inbound_id: str, quantity: int, location: str, eta: date) -> dict[str, Any]:
    return {
        "type": "inbound", "event_id": f"i-{inbound_id}", "occurred_at": now_iso(), "sku": sku,
        "inbound_id": inbound_id, "location": location, "quantity": quantity,
        "eta": eta.isoformat(),
    }  # fmt: skip


def build_world(stack: Stack) -> None:
    """Four skus, two reservations, two inbound lines and one poison message.

    SKU-T1: DC-EAST 10 available + 2 damaged, DC-WEST 3; ORD-1:1 holds 4 at DC-EAST (web,
    expires in 2 h); PO-1 20 at DC-WEST in 3 days, PO-2 5 at DC-EAST in 30 days.
    SKU-ZERO: 2 at DC-EAST, all reserved by ORD-2:1 (never expires): at zero everywhere.
    SKU-SAFE: 3 at DC-EAST: under the marketplace's safety stock of 5, sellable on web.
    SKU-OK: 50 at DC-EAST.
    """
    expires = (datetime.now(UTC) + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    stack.produce([(stack.settings.topics.movements, b"SKU-P", b"{not json")])
    stack.produce(
        [
            receipt("SKU-T1", 10, "DC-EAST", "A-1"),
            receipt("SKU-T1", 2, "DC-EAST", "Q-1", to_status="damaged"),
            receipt("SKU-T1", 3, "DC-WEST", "W-1"),
            reservation("SKU-T1", 4, "ORD-1:1", "web", "DC-EAST", expires_at=expires),
            inbound("SKU-T1", "PO-1", 20, "DC-WEST", TODAY + timedelta(days=3)),
            inbound("SKU-T1", "PO-2", 5, "DC-EAST", TODAY + timedelta(days=30)),
            receipt("SKU-ZERO", 2),
            reservation("SKU-ZERO", 2, "ORD-2:1", "web", "DC-EAST"),
            receipt("SKU-SAFE", 3),
            receipt("SKU-OK", 50),
        ]
    )


def get(base: str, path: str, key: str | None = READ_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{base}{path}", headers=headers, timeout=10)


def settled(base: str) -> dict[str, Any]:
    """The summary once the whole world is folded and the consumer has reported it."""

    def fetch() -> dict[str, Any]:
        reply = get(base, "/v1/ops/summary")
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    def done(s: dict[str, Any]) -> bool:
        channels = {c["channel"]: c for c in s["channels"]}
        return (
            channels.get("web", {}).get("skus") == 4
            and s["open_reservations"] == 2
            and s["dead_letters_last_hour"] == 1
            and s["lag_total"] is not None
            and s["visible_p99_ms"] is not None
        )

    return poll(fetch, done, timeout=40, pause=0.5)


def check_summary(s: dict[str, Any]) -> None:
    channels = {c["channel"]: c for c in s["channels"]}
    assert channels["web"] == {
        "channel": "web", "skus": 4, "at_zero": 1, "at_zero_examples": ["SKU-ZERO"],
        "under_safety_stock": 0, "under_safety_stock_examples": [], "buffers": "low at 3",
    }  # fmt: skip
    assert channels["marketplace"] == {
        "channel": "marketplace", "skus": 4, "at_zero": 1, "at_zero_examples": ["SKU-ZERO"],
        "under_safety_stock": 1, "under_safety_stock_examples": ["SKU-SAFE"], "buffers": "",
    }  # fmt: skip
    assert s["skus_scanned"] == 4 and s["truncated"] is False
    assert [
        (r["reservation_id"], r["sku"], r["quantity"]) for r in s["oldest_open_reservations"]
    ] == [
        ("ORD-1:1", "SKU-T1", 4),  # expires first
        ("ORD-2:1", "SKU-ZERO", 2),  # never expires: last
    ]
    assert s["oldest_open_reservations"][1]["expires_at"] is None
    assert sum(d["count"] for d in s["dead_letters_by_reason"]) == 1
    assert len(s["consumers"]) == 1 and not s["consumers"][0]["stale"]
    assert s["lag_total"] == sum(p["lag"] for p in s["lag"])
    assert s["lag"] and all(re.fullmatch(r".+/[0-9]+", p["partition"]) for p in s["lag"])
    assert 0 <= s["visible_p50_ms"] <= s["visible_p99_ms"]


def check_sku_t1(v: dict[str, Any]) -> None:
    assert v["sku"] == "SKU-T1" and v["known"] is True
    locations = {loc["location"]: loc for loc in v["locations"]}
    assert locations["DC-EAST"] == {
        "location": "DC-EAST", "on_hand": 10, "other": {"damaged": 2}, "reserved": 4, "inbound": 5,
    }  # fmt: skip
    assert locations["DC-WEST"] == {
        "location": "DC-WEST", "on_hand": 3, "other": {}, "reserved": 0, "inbound": 20,
    }  # fmt: skip
    assert v["inbound"] == [
        {"inbound_id": "PO-1", "location": "DC-WEST", "quantity": 20,
         "eta": (TODAY + timedelta(days=3)).isoformat()},
        {"inbound_id": "PO-2", "location": "DC-EAST", "quantity": 5,
         "eta": (TODAY + timedelta(days=30)).isoformat()},
    ]  # fmt: skip
    channels = {c["channel"]: c for c in v["channels"]}
    assert (
        channels["web"]["available_to_sell"],
        channels["web"]["on_hand"],
        channels["web"]["reserved"],
    ) == (9, 13, 4)
    assert (
        channels["marketplace"]["available_to_sell"],
        channels["marketplace"]["safety_stock"],
    ) == (1, 5)
    assert [r["reservation_id"] for r in v["reservations"]] == ["ORD-1:1"]


# -- the browser ---------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver, installed with apt-get when missing (as root)."""
    binary = shutil.which("chromium") or CHROMIUM
    driver = shutil.which("chromedriver") or CHROMEDRIVER
    if not (os.path.exists(binary) and os.path.exists(driver)):
        if os.geteuid() != 0:
            pytest.fail(
                "the control-tower browser test needs Debian's chromium and chromedriver; "
                "install them with `sudo apt-get install -y chromium chromium-driver`"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "chromium",
            "chromium-driver",
        ]
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:  # a fresh image may have no package lists yet
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        binary = shutil.which("chromium") or CHROMIUM
        driver = shutil.which("chromedriver") or CHROMEDRIVER
        if not (os.path.exists(binary) and os.path.exists(driver)):
            pytest.fail(
                "could not install chromium and chromium-driver with apt-get:\n"
                + done.stdout[-2000:]
                + done.stderr[-2000:]
            )
    return binary, driver


@pytest.fixture
def browser(chromium: tuple[str, str]) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the control-tower browser test needs selenium: pip install selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromium[1]))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.config('[[locations]]\nname = "DC-EAST"\ndaily_capacity_units = 1000\n')
def test_control_tower_page_in_a_real_browser(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stack.start_consumer()
    base = stack.start_api()
    build_world(stack)
    expected = settled(base)
    check_summary(expected)
    kit = httpx.put(
        f"{base}/v1/kits/KIT-UI",
        json={"components": [{"sku": "SKU-T1", "quantity": 2}]},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert kit.status_code == 200, kit.text
    poll(lambda: get(base, "/v1/ops/summary").json()["kits"],
         lambda kits: kits and kits[0]["available_to_sell"].get("web", 0) > 0, timeout=20)  # fmt: skip

    browser.get(f"{base}/ui?key={READ_KEY}")
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-summary"))
    assert browser.title == "atp control tower"

    def text(css: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, css).text).strip()

    def number(value: Any) -> str:  # as the page's JavaScript writes it: 3334.0 is "3334"
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return "n/a" if value is None else str(value)

    # The figures shown are the API's (everything has settled, so they no longer move).
    now = get(base, "/v1/ops/summary").json()
    for channel in now["channels"]:
        row = f'[data-testid="channels"] tr[data-channel="{channel["channel"]}"]'
        for field in ("skus", "at_zero", "under_safety_stock"):
            assert text(f'{row} td[data-field="{field}"]') == str(channel[field]), (channel, field)
    assert text('[data-testid="channels"] tr[data-channel="marketplace"]').count("SKU-SAFE") == 1
    web_buffers = '[data-testid="channels"] tr[data-channel="web"] td[data-field="buffers"]'
    assert text(web_buffers) == "low at 3"
    assert text('[data-testid="lag-total"]') == number(now["lag_total"])
    assert text('[data-testid="visible-p50"]') == number(now["visible_p50_ms"])
    assert text('[data-testid="visible-p99"]') == number(now["visible_p99_ms"])
    assert text('[data-testid="dead-total"]') == "1"
    assert text('[data-testid="open-reservations"]') == "2"
    dead_rows = browser.find_elements(By.CSS_SELECTOR, '[data-testid="dead-letters"] tbody tr')
    assert [r.text for r in dead_rows] == [
        f"{d['reason']} {d['count']}" for d in now["dead_letters_by_reason"]
    ]
    held = browser.find_elements(By.CSS_SELECTOR, '[data-testid="reservations"] tbody tr')
    assert [r.get_attribute("data-reservation") for r in held] == ["ORD-1:1", "ORD-2:1"]
    # Kits and today's capacity, as the summary has them.
    assert [k["sku"] for k in now["kits"]] == ["KIT-UI"]
    kit_row = '[data-testid="kits"] tr[data-kit="KIT-UI"]'
    assert text(f'{kit_row} td[data-field="components"]') == "2 x SKU-T1"
    web_kits = now["kits"][0]["available_to_sell"]["web"]
    assert f"web {web_kits}" in text(f'{kit_row} td[data-field="available_to_sell"]')
    [east] = now["locations"]
    assert east == {"name": "DC-EAST", "daily_capacity_units": 1000, "allocated_today": 0,
                    "remaining_today": 1000}  # fmt: skip
    for field in ("daily_capacity_units", "allocated_today", "remaining_today"):
        cell = f'[data-testid="capacity"] tr[data-location="DC-EAST"] td[data-field="{field}"]'
        assert text(cell) == str(east[field])
    partitions = browser.find_elements(
        By.CSS_SELECTOR, '[data-testid="lag"] tbody tr[data-partition]'
    )
    assert {p.get_attribute("data-partition") for p in partitions} == {
        p["partition"] for p in now["lag"]
    }

    # Search one sku.
    box = browser.find_element(By.ID, "sku-input")
    box.send_keys("SKU-T1")
    browser.find_element(By.CSS_SELECTOR, '#sku-form button[type="submit"]').click()
    wait.until(lambda d: d.find_element(By.ID, "sku-result").get_attribute("data-sku") == "SKU-T1")
    view = get(base, "/v1/ops/sku/SKU-T1").json()
    check_sku_t1(view)
    for loc in view["locations"]:
        row = f'[data-testid="sku-locations"] tr[data-location="{loc["location"]}"]'
        assert text(f'{row} td[data-field="on_hand"]') == str(loc["on_hand"])
        assert text(f'{row} td[data-field="reserved"]') == str(loc["reserved"])
        assert text(f'{row} td[data-field="inbound"]') == str(loc["inbound"])
        assert text(f'{row} td[data-field="status:damaged"]') == str(loc["other"].get("damaged", 0))
    for channel in ("web", "marketplace"):
        served = availability(base, READ_KEY, channel, "SKU-T1")  # the public read
        row = f'[data-testid="sku-channels"] tr[data-channel="{channel}"]'
        assert text(f'{row} td[data-field="available_to_sell"]') == str(served["available_to_sell"])
        assert text(f'{row} td[data-field="on_hand"]') == str(served["on_hand"])
        assert text(f'{row} td[data-field="reserved"]') == str(served["reserved"])
    etas = browser.find_elements(
        By.CSS_SELECTOR, '[data-testid="sku-inbound"] td[data-field="eta"]'
    )
    assert [e.text for e in etas] == [line["eta"] for line in view["inbound"]]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # The whole page in one image: a viewport as tall as the document.
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    time.sleep(0.2)
    target = ARTIFACTS / "control-tower.png"
    assert browser.save_screenshot(str(target))
    assert target.stat().st_size > 10_000


# -- the JSON endpoints and `atp report` -----------------------------------------------------


def test_ops_endpoints_need_a_read_or_admin_key_and_report_the_world(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    build_world(stack)
    check_summary(settled(base))

    for path in ("/v1/ops/summary", "/v1/ops/sku/SKU-T1"):
        reply = get(base, path, key=None)
        assert reply.status_code == 401, path
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert get(base, path, key="not-a-key").status_code == 401
        assert get(base, path, key=WRITE_KEY).status_code == 403
        assert get(base, path, key=READ_KEY).status_code == 200
        assert get(base, path, key=ADMIN_KEY).status_code == 200
        # The ?key= stand-in is for the page only.
        assert httpx.get(f"{base}{path}?key={READ_KEY}", timeout=5).status_code == 401

    assert httpx.get(f"{base}/ui", timeout=5).status_code == 401
    assert httpx.get(f"{base}/ui?key={WRITE_KEY}", timeout=5).status_code == 403
    page = httpx.get(f"{base}/ui?key={READ_KEY}", timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    # Style and script come from the service's own files, nothing inline, nothing elsewhere.
    policy = page.headers["content-security-policy"]
    assert (
        "script-src 'self'" in policy
        and "style-src 'self'" in policy
        and "unsafe-inline" not in policy
    )
    script = httpx.get(f"{base}/ui/static/ui.js", timeout=5)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "/v1/ops/summary" in script.text and "http" not in script.text
    assert httpx.get(f"{base}/ui/static/ui.css", timeout=5).status_code == 200
    assert get(base, "/ui", key=ADMIN_KEY).status_code == 200

    check_sku_t1(get(base, "/v1/ops/sku/SKU-T1").json())
    unseen = get(base, "/v1/ops/sku/NEVER-SEEN").json()
    assert unseen["known"] is False and unseen["inbound"] == [] and unseen["reservations"] == []
    assert [(c["channel"], c["available_to_sell"], c["safety_stock"], c["as_of"]) for c in unseen["channels"]] == [
        ("web", 0, 0, None), ("marketplace", 0, 5, None),
    ]  # fmt: skip
    assert get(base, "/v1/ops/sku/" + "x" * 201).status_code == 400
    assert get(base, "/v1/ops/sku/bad%01sku").status_code == 400
    assert "/v1/ops/summary" in get(base, "/schema/openapi.json").json()["paths"]

    console = Console(record=True, width=220)
    assert run_report(stack.settings, console, sku="SKU-T1") == 0
    out = console.export_text()
    for needle in ("Channels", "SKU-ZERO", "SKU-SAFE", "ORD-1:1", "ORD-2:1", "never",
                   "Dead letters by reason", "Consumer lag per partition", "SKU-T1 per location",
                   "damaged", "PO-1", (TODAY + timedelta(days=3)).isoformat()):  # fmt: skip
        assert needle in out, needle
    web_row = next(
        line
        for line in out.splitlines()
        if line.lstrip("│ ").startswith("web ") and "SKU-ZERO" in line
    )
    assert [cell.strip() for cell in web_row.strip("│").split("│")][:4] == [
        "web",
        "4",
        "1",
        "SKU-ZERO",
    ]


def test_report_says_when_redis_is_unreachable() -> None:
    console = Console(record=True, width=200)
    settings = parse_config(config_text("redis://127.0.0.1:1/0"))
    assert run_report(settings, console) == 1
    assert "cannot read Redis" in console.export_text()


def test_the_scan_is_bounded_and_says_so(redis_url: str) -> None:
    settings = parse_config(config_text(redis_url))
    projector = projector_for(settings)
    now_us = to_us(datetime.now(UTC))
    states = [
        SkuState(
            sku=f"S{i}",
            bins=(BinStock("DC-EAST", "A", "available", i),),
            reservations=(
                Reservation(
                    f"R{i}", True, "web", "DC-EAST", 1, expires_at=now_us + (10 - i) * 10**9
                ),
            ),
        )
        for i in range(1, 6)
    ]
    rendered = projector.render(states, now_us)

    async def run() -> tuple[Any, Any]:
        client = aredis.Redis.from_url(redis_url)
        try:
            for state in states:
                fields = {keys.STATE_FIELD: dump_state(state)}
                for channel, doc in rendered.documents[state.sku].items():
                    fields[projection_field(channel)] = doc
                await client.hset(keys.SINGLE.sku_key(state.sku), mapping=fields)  # type: ignore[misc]
            await client.sadd(keys.SINGLE.marks_key("S1", 0), "1")  # type: ignore[misc]  # not a sku hash: skipped
            return await gather_summary(client, settings), await gather_summary(
                client, settings, max_skus=2
            )
        finally:
            await client.aclose()

    full, bounded = asyncio.run(run())
    assert (full.skus_scanned, full.truncated) == (5, False)
    assert (bounded.skus_scanned, bounded.truncated) == (2, True)
    web = next(c for c in full.channels if c.channel == "web")
    assert (web.at_zero, web.at_zero_examples) == (1, ["S1"])  # 1 on hand, 1 reserved
    market = next(c for c in full.channels if c.channel == "marketplace")
    assert (market.under_safety_stock, market.under_safety_stock_examples) == (
        4,
        ["S2", "S3", "S4", "S5"],
    )
    # S5's reservation expires first; no consumer has reported.
    assert [r.reservation_id for r in full.oldest_open_reservations] == [
        "R5",
        "R4",
        "R3",
        "R2",
        "R1",
    ]
    assert full.lag_total is None and full.consumers == []
    assert msgspec.json.decode(msgspec.json.encode(full))["generated_at"].endswith("Z")
