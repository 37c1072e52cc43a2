"""Shared fixtures: real redis-server and Kafka-compatible broker processes, test config.

Services run on free loopback ports (never 6379) and are stopped at the end of the session.
Set ATP_TEST_KAFKA_BOOTSTRAP to use an external broker instead of the bundled Tansu.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
import redis
from confluent_kafka import Producer
from hypothesis import HealthCheck, settings

from atp_service.config import Settings, parse_config
from atp_service.local.config_file import ApiKey, Channel, ConfigFile
from atp_service.local.services import (
    ClusterService,
    Service,
    atp_command,
    create_topics,
    free_ports,
    start_broker,
    start_redis,
    start_redis_cluster,
    wait_until,
)
from atp_service.runtime import sync_redis
from atp_service.store import keys, redis_store

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("deep", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

READ_KEY = "test-read-key"
WRITE_KEY = "test-write-key"
ADMIN_KEY = "test-admin-key"
ALL_KEY = "test-all-key"


TEST_CHANNELS = (
    # web's low_stock_threshold changes no value, only the stock states (contract section 12).
    Channel(
        "web",
        1,
        ("DC-EAST", "DC-WEST"),
        safety_stock=0,
        inbound_horizon_days=14,
        buffers={"low_stock_threshold": 3},
    ),
    Channel("marketplace", 2, ("DC-EAST",), safety_stock=5, inbound_horizon_days=0),
)
TEST_KEYS = (
    ApiKey("reader", READ_KEY, ("availability:read",)),
    ApiKey("writer", WRITE_KEY, ("allocations:write",)),
    ApiKey("admin", ADMIN_KEY, ("admin",)),
    ApiKey("all", ALL_KEY),
)


# A kit of the config file (contract section 10), for tests marked
# @pytest.mark.config(TEST_KITS); its components are used by no other test.
TEST_KITS = """
[[kits]]
sku = "KIT-CFG"
components = [{sku = "KC-A", quantity = 2}, {sku = "KC-B", quantity = 1}]
"""


SESSION_TIMEOUT_MS: Final = 1500


def config_text(
    redis_url: str = "redis://127.0.0.1:1/0",
    bootstrap: str = "127.0.0.1:1",
    prefix: str = "t",
    group_id: str = "atp-test",
    extra: str = "",
    ledger_dir: str = "/nonexistent/atp-ledger",
    metrics_port: int = 0,
    redis_options: Mapping[str, object] | None = None,
) -> str:
    """The tests' config: two channels over two locations, a key per scope and one for all."""
    return ConfigFile(
        redis_url=redis_url,
        bootstrap=bootstrap,
        ledger_dir=ledger_dir,
        channels=TEST_CHANNELS,
        api_keys=TEST_KEYS,
        group_id=group_id,
        topic_prefix=prefix,
        consumer={"batch_timeout_ms": 20, "sweep_interval_ms": 100, "metrics_port": metrics_port},
        extra="\n" + extra if extra else "",
        redis=redis_options or {},
        # A consumer killed by a test leaves the group 1.5 s later, not 6: every restart after
        # a kill waits that long before it is given the partitions.
        kafka={"session_timeout_ms": SESSION_TIMEOUT_MS},
    ).text()


@pytest.fixture(scope="session")
def test_settings() -> Settings:
    """The test channel set without live services (unit tests)."""
    return parse_config(config_text())


# -- real services ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_redis(tmp_path_factory.mktemp("redis"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterService]:
    """3 primaries with a replica each. A test that kills a node rejoins it before it ends."""
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_service: Service) -> Iterator[str]:
    client = redis.Redis(port=redis_service.port)
    client.flushall()
    client.close()
    return f"redis://127.0.0.1:{redis_service.port}/0"


@pytest.fixture(scope="session")
def broker_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("ATP_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    service = start_broker(log_file=tmp_path_factory.mktemp("broker") / "broker.log")
    yield f"127.0.0.1:{service.port}"
    service.stop()


@dataclass
class Stack:
    """One test's world: its own topics and group on the shared services."""

    settings: Settings
    config_path: Path
    tmp: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def layout(self) -> keys.Layout:
        return keys.Layout(self.settings.redis.shard_count)

    def redis(self) -> redis.Redis:
        """A client of the stack's Redis (a cluster client on a cluster)."""
        return sync_redis(self.settings)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "ATP_CONFIG": str(self.config_path), "ATP_LOG_LEVEL": "INFO"}

    def producer(self) -> Producer:
        return Producer(
            {
                "bootstrap.servers": self.settings.kafka.bootstrap,
                "linger.ms": 2,
                "enable.idempotence": True,
                "partitioner": "murmur2_random",  # as the service's own producers
            }
        )

    def produce(
        self,
        events: list[dict[str, Any]] | list[tuple[str, bytes, bytes]],
        producer: Producer | None = None,
    ) -> None:
        """Produce event dicts (topic chosen by type) or raw (topic, key, value) triples."""
        own = producer is None
        p = producer or self.producer()
        for item in events:
            if isinstance(item, tuple):
                topic, key, value = item
            else:
                topic, key, value = (
                    self.topic_for(item),
                    str(item.get("sku", "")).encode(),
                    msgspec.json.encode(item),
                )
            p.produce(topic, key=key, value=value)
            p.poll(0)
        if own:
            assert p.flush(30) == 0

    def topic_for(self, event: dict[str, Any]) -> str:
        t = self.settings.topics
        kind = event.get("type")
        if kind in ("bin_movement", "bin_count"):
            return t.movements
        if kind in ("reservation_created", "reservation_released"):
            return t.reservations
        return t.inbound

    def start_consumer(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """An `atp consume`, started and not waited for. Started before `start_api(s)`, where
        the order is not what a test is about, it starts and joins its group meanwhile."""
        log = open(self.tmp / f"consumer-{len(self.processes)}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            atp_command("consume"),
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def start_api(self, workers: int = 1) -> str:
        (base,) = self.start_apis(1, workers)
        return base

    def start_apis(self, count: int, workers: int = 1) -> list[str]:
        """``count`` `atp serve` processes, started together (each takes seconds to answer)
        and waited for."""
        import httpx

        bases = []
        for port in free_ports(count):
            log = open(self.tmp / f"api-{port}.log", "ab")  # noqa: SIM115
            process = subprocess.Popen(
                atp_command("serve", "--port", str(port), "--workers", str(workers)),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.processes.append(process)
            bases.append(f"http://127.0.0.1:{port}")
        for base in bases:
            wait_until(
                lambda base=base: httpx.get(f"{base}/healthz", timeout=1).status_code == 200,
                30,
                "the API",
            )
        return bases

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


# Where a stack keeps its projection. A test marked @pytest.mark.redis_kinds(...) runs once
# per kind named: "single" (one Redis, one shard), "shards" (one Redis, the data in 4
# shards, each written by its own script) and "cluster" (a 3-primary Redis Cluster).
REDIS_KINDS: Final = ("single", "shards", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("redis_kinds")
    if marker is not None and "redis_kind" in metafunc.fixturenames:
        kinds = marker.args or REDIS_KINDS
        metafunc.parametrize("redis_kind", kinds, indirect=True)


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    kind: str = getattr(request, "param", "single")
    return kind


def redis_for_kind(request: pytest.FixtureRequest, kind: str) -> tuple[str, dict[str, object]]:
    """The url and [redis] options of a stack's Redis, emptied for the test."""
    if kind == "cluster":
        cluster: ClusterService = request.getfixturevalue("redis_cluster")
        for node in cluster.primaries():
            redis.Redis(port=node.port).flushall()
        return cluster.url, {"cluster": True}
    url: str = request.getfixturevalue("redis_url")
    return url, ({"shards": 4} if kind == "shards" else {})


def initialize(settings: Settings, how: str = "test") -> None:
    """Mark every shard initialized, as the first consumer of a deployment leaves it."""
    client = sync_redis(settings)
    layout = keys.Layout(settings.redis.shard_count)
    redis_store.initialize(client, layout, how, replace=True)
    client.close()


@pytest.fixture
def stack(
    request: pytest.FixtureRequest, redis_kind: str, broker_bootstrap: str, tmp_path: Path
) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    marker = request.node.get_closest_marker("config")  # @pytest.mark.config("<toml>")
    url, options = redis_for_kind(request, redis_kind)
    more = request.node.get_closest_marker("redis_options")  # @pytest.mark.redis_options(k=v)
    if more is not None:
        options = {**options, **more.kwargs}
    text = config_text(
        url,
        broker_bootstrap,
        prefix=prefix,
        group_id=f"g-{prefix}",
        ledger_dir=str(tmp_path / "ledger"),
        extra=marker.args[0] if marker else "",
        redis_options=options,
    )
    path = tmp_path / "atp.toml"
    path.write_text(text)
    settings_ = parse_config(text)
    create_topics(broker_bootstrap, settings_.topics.names())
    # Initialized, as the first consumer of a deployment leaves it: the API answers 503, not
    # zeros, until a projection is there (contract section 4), and a test may start the API
    # before its consumer.
    initialize(settings_)
    world = Stack(settings_, path, tmp_path)
    yield world
    world.stop_all()


SERVICE_FIXTURES = frozenset(
    {"redis_service", "redis_cluster", "redis_url", "broker_bootstrap", "stack", "make_stack"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the layout honest: tests/integration and tests/faults carry the integration
    marker, and tests/unit and tests/property start no service (`make test-fast`)."""
    wrong = []
    for item in items:
        where = item.path.relative_to(Path(__file__).parent).parts[0]
        uses = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        marked = item.get_closest_marker("integration") is not None
        if where in ("integration", "faults") and not marked:
            wrong.append(f"{item.nodeid}: in tests/{where} without the integration marker")
        if where in ("unit", "property") and (uses or marked):
            wrong.append(f"{item.nodeid}: in tests/{where} but needs services ({sorted(uses)})")
    if wrong:
        raise pytest.UsageError("tests in the wrong place:\n" + "\n".join(wrong))
