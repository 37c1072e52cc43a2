"""`atp consume` runs without the HTTP side: a consumer image or process that loads
Litestar or granian pays their start-up and memory for nothing, and a change that pulls
them in shows here (the import-linter contracts in pyproject.toml check the modules; this
checks what the command really loads, lazy imports included)."""

from __future__ import annotations

import json
import subprocess
import sys

# What atp_service.cli.consume imports before it starts the loop.
LOADED_BY_CONSUME = """
import json, sys
import atp_service.cli
from atp_service.runtime import build_consumer_loop
from streams.consumer import LedgerAhead
from prometheus_client import start_http_server
print(json.dumps(sorted(sys.modules)))
"""


def test_atp_consume_loads_no_http_framework() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOADED_BY_CONSUME], capture_output=True, text=True, check=True
    )
    loaded = json.loads(done.stdout)
    assert "streams.consumer.loop" in loaded  # the consumer itself is there
    http = [m for m in loaded if m.split(".")[0] in {"litestar", "granian", "uvloop"}]
    http += [m for m in loaded if m.startswith("atp_service.http")]
    assert http == []
