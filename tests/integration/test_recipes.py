"""docs/recipes.md, run: each recipe's event blocks are produced to a real broker in order,
and after each block the read over HTTP must show the block that follows it."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import READ_KEY, Stack

pytestmark = pytest.mark.integration

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
BLOCK = re.compile(r"```json (recipe|expect):(\w+)\n(.*?)```", re.DOTALL)
DOC_ETA = "2026-12-10"  # moved to two days from today, to stay within the horizon


def steps() -> dict[str, list[tuple[list[dict[str, Any]], dict[str, Any]]]]:
    eta = (datetime.now(UTC).date() + timedelta(days=2)).isoformat()
    out: dict[str, list[tuple[list[dict[str, Any]], dict[str, Any]]]] = {}
    pending: dict[str, list[dict[str, Any]]] = {}
    for kind, name, body in BLOCK.findall(RECIPES.read_text()):
        value = json.loads(body.replace(DOC_ETA, eta))
        if kind == "recipe":
            pending.setdefault(name, []).extend(value)
        else:
            out.setdefault(name, []).append((pending.pop(name, []), value))
    assert not pending, f"events with no read after them: {sorted(pending)}"
    return out


RECIPE_STEPS = steps()


def test_the_recipes_page_has_its_three_recipes() -> None:
    assert sorted(RECIPE_STEPS) == ["partial", "return", "transfer"]


@pytest.mark.parametrize("name", sorted(RECIPE_STEPS))
def test_a_recipe_reads_as_documented(stack: Stack, name: str) -> None:
    stack.start_consumer()
    base = stack.start_api()
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    for n, (events, expected) in enumerate(RECIPE_STEPS[name]):
        assert events, f"{name} step {n + 1} produces nothing"
        stack.produce(events)
        sku = events[0]["sku"]
        deadline = time.monotonic() + 30
        while True:
            got = httpx.get(f"{base}/v1/availability/web/{sku}", headers=headers, timeout=5).json()
            if {k: got.get(k) for k in expected} == expected:
                break
            assert time.monotonic() < deadline, (
                f"{name} step {n + 1}: read {got}, documented {expected}"
            )
            time.sleep(0.1)
