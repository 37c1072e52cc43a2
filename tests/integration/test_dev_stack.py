"""`make run` as a newcomer uses it: `atp dev` started, stopped with Ctrl-C and started again
serves demo values each time; and when a process it started exits, `atp dev` stops too,
saying which, instead of leaving a stack that answers zeros.

Each run starts its own redis-server and broker on free ports, in a temporary folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from atp_service.local.services import free_port

pytestmark = pytest.mark.integration


class Dev:
    """One `atp dev` process whose output is collected as it runs."""

    def __init__(self, cwd: Path, sigint: Any = signal.SIG_DFL) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "atp_service.cli", "dev", "--port", str(self.port), "--skus", "20", "--rate", "20"],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "ATP_LOG_FORMAT": "text"},
            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def key(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.strip().startswith("key:"):
                    return line.split(":", 1)[1].strip()
            assert self.process.poll() is None, f"atp dev exited:\n{self.output()[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"atp dev did not come up:\n{self.output()[-3000:]}")

    def demo_value(self, key: str, timeout: float = 30) -> int:
        """on_hand of a demo sku on the web channel, once the demo's opening stock shows."""
        headers = {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = httpx.get(
                f"http://127.0.0.1:{self.port}/v1/availability/web/SKU-00001", headers=headers
            )
            if reply.status_code == 200 and reply.json()["on_hand"] > 0:
                return int(reply.json()["on_hand"])
            time.sleep(0.2)
        raise AssertionError(f"no demo value within {timeout}s:\n{self.output()[-3000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C
        return self.process.wait(60)


def test_atp_dev_serves_demo_values_after_a_restart(tmp_path: Path) -> None:
    # The second time as a background job of a script starts it: with SIGINT ignored,
    # which Ctrl-C (SIGINT) must still stop.
    for attempt, sigint in enumerate([signal.SIG_DFL, signal.SIG_IGN]):
        dev = Dev(tmp_path, sigint)
        try:
            key = dev.key()
            assert dev.demo_value(key) > 0, f"run {attempt + 1}"
        finally:
            status = dev.stop()
        assert status == 0, dev.output()[-3000:]
        assert "atp dev stopped." in dev.output()


@pytest.mark.parametrize(
    ("process", "sig", "said"),
    [
        ("atp_service.cli consume", signal.SIGKILL, ["atp consume exited with status -9"]),
        # A service's own words come from its log file, shown at the end.
        ("redis-server", signal.SIGTERM, ["redis-server exited with status 0", "SIGTERM"]),
    ],
)
def test_atp_dev_stops_when_a_process_it_started_exits(
    tmp_path: Path, process: str, sig: signal.Signals, said: list[str]
) -> None:
    dev = Dev(tmp_path)
    try:
        dev.key()
        found = subprocess.run(
            ["pgrep", "-P", str(dev.process.pid), "-f", process],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        (child,) = [int(pid) for pid in found.stdout.split()]
        os.kill(child, sig)
        status = dev.process.wait(60)
    finally:
        dev.stop()
    assert status == 1
    for words in said:
        assert words in dev.output(), dev.output()[-3000:]
    assert "atp dev stopped." in dev.output()
