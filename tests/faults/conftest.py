"""Fixtures of the fault-injection tests (the services themselves come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.faults.harness import build_stack


@pytest.fixture
def make_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build a Stack (short session timeout) on the session services or on given ones;
    every process it started is stopped at the end."""
    made: list[Stack] = []

    def make(
        redis_url: str | None = None, bootstrap: str | None = None, extra_consumer: str = ""
    ) -> Stack:
        url = redis_url or request.getfixturevalue("redis_url")
        servers = bootstrap or request.getfixturevalue("broker_bootstrap")
        directory = tmp_path / f"stack-{len(made)}"
        directory.mkdir()
        stack = build_stack(directory, url, servers, extra_consumer)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop_all()
