"""Fixtures of the fault-injection tests (the services themselves come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import Stack, redis_for_kind
from tests.faults.harness import build_stack


@pytest.fixture
def make_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build a Stack (short session timeout) on the session services or on given ones;
    every process it started is stopped at the end."""
    made: list[Stack] = []

    def make(
        redis_url: str | None = None,
        bootstrap: str | None = None,
        redis_kind: str = "single",
        redis_options: Mapping[str, object] | None = None,
    ) -> Stack:
        url, options = (redis_url, {}) if redis_url else redis_for_kind(request, redis_kind)
        options = {**options, **(redis_options or {})}
        servers = bootstrap or request.getfixturevalue("broker_bootstrap")
        directory = tmp_path / f"stack-{len(made)}"
        directory.mkdir()
        stack = build_stack(directory, url, servers, options)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop_all()
