"""A throw-away PostgreSQL server for the read benchmark's compute-on-read baseline.

The server binaries come from the Debian package (``/usr/lib/postgresql/<version>/bin``):
when they are missing and we run as root, ``apt-get install -y postgresql`` installs them
(and the package's own cluster, which it may start on 5432, is stopped again); otherwise we
stop and say how to install them, as the read benchmark does for wrk.

``start_postgres(dir)`` initdb's a cluster under ``dir`` (a benchmark's temp dir), starts
``postgres`` itself as a child process (not through ``pg_ctl``, so we hold the postmaster's
pid) on a free loopback port (never 5432) with its unix socket in ``dir`` too, and returns a
``Service`` whose ``stop()`` does a fast shutdown (SIGINT, then SIGQUIT, then SIGKILL). Add
it to ``Bench.services`` and ``Bench.close()`` stops it on every exit path. PostgreSQL
refuses to run as root, so as root the cluster belongs to, and the server runs as, the
``postgres`` system user the package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from atp_service.local.services import Service, free_port, wait_until
from benchmarks.common import apt_install

DB_USER = "atp"
DB_NAME = "postgres"  # the database initdb creates
SYSTEM_USER = "postgres"  # created by the Debian package


@dataclass(frozen=True)
class Binaries:
    bindir: Path
    version: str

    def path(self, name: str) -> str:
        return str(self.bindir / name)


def find_binaries() -> Binaries | None:
    """The newest /usr/lib/postgresql/<version>/bin holding postgres, initdb and pg_ctl."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        if all(
            (bindir / name).is_file() for name in ("postgres", "initdb", "pg_ctl", "pg_isready")
        ):
            key = tuple(int(p) for p in re.findall(r"\d+", bindir.parent.name)) or (0,)
            found.append((key, bindir))
    if not found:
        return None
    bindir = max(found)[1]
    return Binaries(bindir, bindir.parent.name)


def ensure_postgres() -> Binaries:
    """Find the server binaries; install the Debian package when missing and we are root."""
    found = find_binaries()
    if found:
        return found
    if apt_install("postgresql"):
        # The package may start its own cluster on 5432; the benchmark does not use it.
        for argv in (["service", "postgresql", "stop"], ["systemctl", "stop", "postgresql"]):
            with contextlib.suppress(OSError):
                subprocess.run(argv, capture_output=True, check=False, timeout=60)
        found = find_binaries()
        if found:
            return found
    raise SystemExit(
        "PostgreSQL (the compute-on-read baseline of the read benchmark) is not installed: run "
        "`sudo apt-get install -y postgresql` (Debian/Ubuntu), then retry"
    )


class PostgresService(Service):
    """The postmaster; ``stop()`` is a fast shutdown (clients are disconnected)."""

    def stop(self, kill: bool = False) -> None:
        process = self.process
        steps = [] if kill else [(signal.SIGINT, 20.0)]  # fast shutdown
        steps += [(signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)]  # immediate, then gone
        for sig, wait_s in steps:
            if process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait_s)


def _owner() -> pwd.struct_passwd | None:
    """Who runs the server: None for ourselves, the postgres system user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise SystemExit(
            f"PostgreSQL refuses to run as root and there is no {SYSTEM_USER!r} system user "
            "(the Debian package creates it): reinstall `postgresql` or run as another user"
        ) from None


def start_postgres(base: Path, binaries: Binaries | None = None) -> tuple[PostgresService, str]:
    """initdb a cluster in ``base``/pg and start it on a free loopback port.

    Returns the running service and its DSN (user ``atp``, database ``postgres``, trust
    auth, loopback only).
    """
    binaries = binaries or ensure_postgres()
    owner = _owner()
    root = base / "pg"
    data, sockets = root / "data", root / "sock"
    root.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    uid = gid = None
    groups: list[int] | None = None
    if owner is not None:
        # The temp dirs are 0700 root's: let the postgres user through (not list) base.
        base.chmod(base.stat().st_mode | 0o111)
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        uid, gid, groups = owner.pw_uid, owner.pw_gid, []
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    if owner is not None:
        env["HOME"] = str(root)
    log = root / "postgres.log"
    init = subprocess.run(
        [binaries.path("initdb"), "-D", str(data), "-U", DB_USER, "--auth=trust",
         "-E", "UTF8", "--locale=C", "--no-sync"],
        capture_output=True, text=True, env=env, check=False, cwd=root,
        user=uid, group=gid, extra_groups=groups,
    )  # fmt: skip
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    port = free_port()
    while port == 5432:  # never the default port
        port = free_port()
    argv = [
        binaries.path("postgres"), "-D", str(data),
        "-c", f"port={port}",
        "-c", "listen_addresses=127.0.0.1",
        "-c", f"unix_socket_directories={sockets}",
        "-c", "max_connections=200",
        "-c", "shared_buffers=256MB",  # the whole data set stays in memory
        "-c", "timezone=UTC",
        # The data is generated and thrown away: no durability needed while loading it.
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        "-c", "logging_collector=off", "-c", "log_min_messages=warning",
    ]  # fmt: skip
    out = open(log, "ab")  # noqa: SIM115 - closed below, the child keeps its copy
    try:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
            start_new_session=True,  # a terminal Ctrl-C reaches us, and we stop it
            user=uid, group=gid, extra_groups=groups,
        )  # fmt: skip
    finally:
        out.close()
    service = PostgresService(f"postgres-{binaries.version}", port, process, argv)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited:\n{log.read_text(errors='replace')[-3000:]}")
        done = subprocess.run(
            [binaries.path("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-d", DB_NAME, "-U", DB_USER],
            capture_output=True, check=False, timeout=5,
        )  # fmt: skip
        return done.returncode == 0

    try:
        wait_until(ready, 60, "postgres", pause=0.1)
    except BaseException:
        service.stop(kill=True)
        raise
    return service, f"postgresql://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"


def server_version(binaries: Binaries) -> str:
    done = subprocess.run(
        [binaries.path("postgres"), "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"(\d+(?:\.\d+)*)", done.stdout)
    return match.group(1) if match else binaries.version
