"""Property-based API tests from the service's own OpenAPI document, against a live server
with real Redis and the real broker: no 5xx, every response matches the schema.

Runs the schemathesis command line (its pytest plugin does not support pytest 9 yet).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ALL_KEY, Stack

pytestmark = pytest.mark.integration


def test_api_conforms_to_its_openapi_document(stack: Stack) -> None:
    stack.start_consumer()
    base = stack.start_api()
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    result = subprocess.run(
        [
            binary, "run", f"{base}/schema/openapi.json",
            "--header", f"Authorization: Bearer {ALL_KEY}",
            # Every check, the stateful phase included: the document says what the server
            # enforces, and the links reach the routes that take an order_id.
            "--checks", "all",
            "--max-examples", "30",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--request-timeout", "10",
            "--seed", "1",
        ],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("schemathesis_hooks.py"))},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # The stateful phase reached the routes that take an order_id through the document's links.
    assert "No links point to" not in result.stdout, result.stdout[-4000:]
