"""``atp dev``: Redis, broker, consumer, API and a demo feed on this machine, no set-up.

Everything runs under .run/ and stops on Ctrl-C, or as soon as any process it started
exits (with that process's own message above, and exit status 1). Every start is clean:
the broker keeps its topics in memory only, so what an earlier run left under .run/ (Redis
data, ledger files) is removed first; a projection folded from a stream that no longer
exists could not be resumed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from confluent_kafka import Producer

from atp_service.config import parse_config
from atp_service.local.config_file import ApiKey, Channel, ConfigFile
from atp_service.local.demo import DemoFeed
from atp_service.local.services import (
    atp_command,
    create_topics,
    start_broker,
    start_redis,
    wait_until,
)

DEV_CHANNELS = (
    Channel("web", 1, ("DC-EAST", "DC-WEST"), safety_stock=0, inbound_horizon_days=14),
    Channel(
        "b2b", 2, ("DC-EAST", "DC-WEST", "DC-CENTRAL"), safety_stock=2, inbound_horizon_days=21
    ),
    Channel("marketplace", 3, ("DC-EAST",), safety_stock=5, inbound_horizon_days=0),
)


def run_dev(port: int = 8000, skus: int = 300, rate: float = 50.0, run_dir: str = ".run") -> int:
    run = Path(run_dir).resolve()
    for earlier in ("redis", "ledger"):
        shutil.rmtree(run / earlier, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    # The two services write to files: their last lines are shown if either exits.
    logs = {"redis-server": run / "redis.log", "the broker": run / "broker.log"}
    for log in logs.values():
        log.unlink(missing_ok=True)
    redis_service = start_redis(run / "redis", log_file=logs["redis-server"])
    broker = start_broker(log_file=logs["the broker"])
    started = [redis_service, broker]
    children: list[subprocess.Popen[bytes]] = []
    watched = {"redis-server": redis_service.process, "the broker": broker.process}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C stops everything even when the shell that started us ignores SIGINT (a
    # background job of a script), where Python would leave it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    status = 0

    def exited() -> str | None:
        for name, process in watched.items():
            code = process.poll()
            if code is not None:
                if name not in logs:  # atp's own processes write to this terminal
                    return f"{name} exited with status {code} (its message is above)"
                return f"{name} exited with status {code}; the end of {logs[name]}:\n" + (
                    _tail(logs[name]) or "    (empty)"
                )
        return None

    try:
        key = "dev-" + secrets.token_urlsafe(18)
        config_text = ConfigFile(
            redis_url=f"redis://127.0.0.1:{redis_service.port}/0",
            bootstrap=f"127.0.0.1:{broker.port}",
            ledger_dir=str(run / "ledger"),
            channels=DEV_CHANNELS,
            api_keys=[ApiKey("developer", key)],
        ).text()
        config_path = run / "atp.toml"
        config_path.write_text(config_text)
        settings = parse_config(config_text)
        bootstrap = settings.kafka.bootstrap
        create_topics(bootstrap, settings.topics.names())
        env = {**os.environ, "ATP_CONFIG": str(config_path)}
        for command in (["consume"], ["serve", "--port", str(port)]):
            children.append(subprocess.Popen(atp_command(*command), env=env))
            watched[f"atp {command[0]}"] = children[-1]
        wait_until(lambda: exited() is not None or _http_ok(port), 30, "the API")
        if (why := exited()) is not None:
            raise _Exited(why)
        base = f"http://127.0.0.1:{port}"
        print(
            f"\natp dev is up.\n  API:      {base}\n  key:      {key}\n"
            f"  try:      curl -H 'Authorization: Bearer {key}' {base}/v1/availability/web/SKU-00001\n"
            f"  OpenAPI:  {base}/schema/openapi.json\n  config:   {config_path}\n"
            f"  Redis:    {settings.redis.url}\n  Kafka:    {bootstrap}\n"
            "Feeding demo events; Ctrl-C stops everything.\n",
            flush=True,
        )
        _feed(settings.kafka.bootstrap, settings, skus, rate, stop, exited)
    except _Exited as exc:
        print(
            f"\natp dev: {exc}\nStopping everything.",
            file=sys.stderr,
            flush=True,
        )
        status = 1
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        for service in reversed(started):
            service.stop()
        print("atp dev stopped.", flush=True)
    return status


class _Exited(Exception):
    """A process ``atp dev`` started has exited."""


def _tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _http_ok(port: int) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
        return bool(reply.status == 200)


def _feed(  # type: ignore[no-untyped-def]
    bootstrap: str,
    settings,
    skus: int,
    rate: float,
    stop: threading.Event,
    exited: Callable[[], str | None],
) -> None:
    # The demo feed stands for the WMS, OMS and ERP: keys hashed as their Java clients do.
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",
        }
    )
    topics = {
        "movements": settings.topics.movements,
        "reservations": settings.topics.reservations,
        "inbound": settings.topics.inbound,
    }
    feed = DemoFeed(
        skus=[f"SKU-{i:05d}" for i in range(1, skus + 1)],
        locations=list(settings.locations),
        channels=[(c.name, c.locations) for c in settings.channels],
    )
    encode = msgspec.json.encode
    for kind, event in feed.opening_stock():
        producer.produce(topics[kind], key=event["sku"].encode(), value=encode(event))
        producer.poll(0)
    producer.flush(10)
    interval = 1.0 / rate if rate > 0 else 1.0
    checked = time.monotonic()
    while not stop.is_set():
        if time.monotonic() - checked > 0.5:
            checked = time.monotonic()
            if (why := exited()) is not None:
                producer.flush(5)
                raise _Exited(why)
        kind, event = feed.next_event()
        producer.produce(topics[kind], key=event["sku"].encode(), value=encode(event))
        producer.poll(0)
        time.sleep(interval)
    producer.flush(5)
