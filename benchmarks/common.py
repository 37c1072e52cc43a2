"""Shared benchmark plumbing: services, wrk, the result table, versions, JSON and PNG.

Every benchmark starts its own redis-server, broker and servers as processes on free
loopback ports (never 6379), through ``atp_service.local.services``, and stops every one of them
in a ``finally``. Figures are the median of at least three runs, printed with min and max
beside the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from atp_service.config import Settings, parse_config
from atp_service.local.config_file import ApiKey, Channel, ConfigFile
from atp_service.local.services import (
    Service,
    atp_command,
    create_topics,
    free_port,
    start_broker,
    start_redis,
    start_redis_cluster,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SIZES = ("small", "full")
API_KEY = "bench-read-key"
WORKERS = 2

# 8 locations, 5 channels (priority order), as the fold target asks.
LOCATIONS = tuple(f"DC-{i:02d}" for i in range(1, 9))
CHANNELS: tuple[tuple[str, int, tuple[str, ...], int, int], ...] = (
    # name, priority, locations, safety_stock, inbound_horizon_days
    ("web", 1, LOCATIONS[:4], 0, 14),
    ("b2b", 2, LOCATIONS, 2, 21),
    ("marketplace", 3, LOCATIONS[:2], 5, 0),
    ("store_pickup", 4, LOCATIONS[4:], 1, 7),
    ("wholesale", 5, LOCATIONS[2:6], 10, 30),
)


# -- command line ---------------------------------------------------------------------


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """``--size`` and ``--runs``; ``extra`` adds a benchmark's own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=SIZES, default="small", help="small (quick) or full")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (median, min, max); >= 3")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.runs = max(3, args.runs)
    return args


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops what it started."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# -- configuration --------------------------------------------------------------------


def bench_config(
    redis_url: str,
    bootstrap: str = "127.0.0.1:1",
    *,
    ledger_dir: str | Path,
    prefix: str = "bench",
    group_id: str = "atp-bench",
    extra: str = "",
    redis_table: dict[str, object] | None = None,
) -> str:
    """The benchmarks' config: 5 channels over 8 locations, one all-scopes API key.

    ``ledger_dir`` must be a directory of the benchmark's own (never the repository's ./var).
    ``redis_table``: more keys of ``[redis]`` (``cluster``, ``shards``; ``Store.redis_table``).
    """
    return ConfigFile(
        redis_url=redis_url,
        bootstrap=bootstrap,
        ledger_dir=str(Path(ledger_dir).resolve()),
        channels=[Channel(name, priority, tuple(locations), safety, horizon)
                  for name, priority, locations, safety, horizon in CHANNELS],
        api_keys=[ApiKey("bench", API_KEY)],
        group_id=group_id,
        topic_prefix=prefix,
        extra="\n" + extra if extra else "",
        redis=redis_table or {},
    ).text()  # fmt: skip


def channel_locations() -> list[tuple[str, tuple[str, ...]]]:
    return [(name, locations) for name, _, locations, _, _ in CHANNELS]


# -- processes --------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class Bench:
    """One benchmark's world: a temp dir, the services and processes it started.

    Use as a context manager; leaving it stops every process (children first, then the
    broker and Redis) even on errors or SIGTERM.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.tmp = Path(tempfile.mkdtemp(prefix=f"atp-bench-{name}-"))
        self.services: list[Service] = []
        self.procs: list[Proc] = []
        self.redis_port: int | None = None
        self.broker_port: int | None = None
        self.config_path: Path | None = None
        self.settings: Settings | None = None
        self._failed = False

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._failed = exc_type is not None
        self.close()

    # services
    def start_redis(self) -> str:
        service = start_redis(self.tmp / "redis")
        self.services.append(service)
        self.redis_port = service.port
        return f"redis://127.0.0.1:{service.port}/0"

    def start_store(self, spec: str) -> Store:
        """A Redis for the service to run on, by ``Store.parse``'s spec: its own redis-server,
        or a 3-primary Redis Cluster with no replicas; stopped with the rest."""
        cluster, shards, step = Store.parse(spec)
        if cluster:
            started = start_redis_cluster(
                self.tmp / f"cluster-{len(self.services)}", primaries=3, replicas_per_primary=0
            )
            self.services.extend(started.nodes)
            primaries = started.primaries()
            return Store(spec, started.url, True, shards, [node.port for node in primaries],
                         [node.process.pid for node in primaries], step)  # fmt: skip
        service = start_redis(self.tmp / f"redis-{len(self.services)}")
        self.services.append(service)
        url = f"redis://127.0.0.1:{service.port}/0"
        return Store(spec, url, False, shards, [service.port], [service.process.pid], step)

    def start_broker(self) -> str:
        service = start_broker(log_file=self.tmp / "broker.log")
        self.services.append(service)
        self.broker_port = service.port
        return f"127.0.0.1:{service.port}"

    def redis(self) -> redis.Redis:
        assert self.redis_port is not None
        return redis.Redis(port=self.redis_port, socket_timeout=60)

    def write_config(self, text: str, create: bool = False, partitions: int = 4) -> Settings:
        self.config_path = self.tmp / "atp.toml"
        self.config_path.write_text(text)
        self.settings = parse_config(text)
        if create:
            create_topics(
                self.settings.kafka.bootstrap, self.settings.topics.names(), partitions=partitions
            )
        return self.settings

    @property
    def env(self) -> dict[str, str]:
        assert self.config_path is not None
        path = os.environ.get("PYTHONPATH", "")
        return {
            **os.environ,
            "ATP_CONFIG": str(self.config_path),
            "ATP_LOG_LEVEL": os.environ.get("ATP_BENCH_LOG_LEVEL", "WARNING"),
            "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
        }

    def spawn(self, name: str, argv: Sequence[str], port: int | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        out = open(log, "ab")  # noqa: SIM115 - closed by the child's exit
        process = subprocess.Popen(
            list(argv), env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: workers can be stopped with it
        )  # fmt: skip
        out.close()
        proc = Proc(name, process, log, port)
        self.procs.append(proc)
        return proc

    def start_api(self, workers: int = WORKERS) -> Proc:
        """`atp serve --workers N` (granian), the production command."""
        port = free_port()
        proc = self.spawn(
            f"api-{port}",
            atp_command("serve", "--port", str(port), "--workers", str(workers)),
            port,
        )
        self._wait_http(proc, "/readyz")
        return proc

    def start_server(self, target: str, workers: int = WORKERS) -> Proc:
        """Another ASGI app factory under exactly the server settings `atp serve` uses."""
        port = free_port()
        name = target.rsplit(":", 1)[-1]
        proc = self.spawn(
            f"{name}-{port}",
            [
                sys.executable,
                "-m",
                "benchmarks.serve",
                target,
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            port,
        )
        self._wait_http(proc, "/healthz")
        return proc

    def start_consumer(self) -> Proc:
        return self.spawn("consumer", atp_command("consume"))

    def _wait_http(self, proc: Proc, path: str) -> None:
        url = f"http://127.0.0.1:{proc.port}{path}"

        def ready() -> bool:
            if not proc.alive:
                raise RuntimeError(
                    f"{proc.name} exited:\n{proc.log.read_text(errors='replace')[-3000:]}"
                )
            return httpx.get(url, timeout=1).status_code == 200

        try:
            wait_until(ready, 60, proc.name, pause=0.1)
        except TimeoutError:
            raise RuntimeError(
                f"{proc.name} not ready:\n{proc.log.read_text(errors='replace')[-3000:]}"
            ) from None

    def stop(self, proc: Proc) -> None:
        process = proc.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        # Anything left in its process group (e.g. a granian worker) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) so far of every process started here (a process group
        counts whole, e.g. granian's workers) and of this process."""
        by_group: dict[int, float] = defaultdict(float)
        by_pid: dict[int, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                seconds = (int(fields[11]) + int(fields[12])) / tick
                pid = int(stat.parent.name)
                by_pid[pid] = seconds
                by_group[int(fields[2])] += seconds
        out = {p.name: by_group.get(p.process.pid, 0.0) for p in self.procs if p.alive}
        out.update({s.name: by_pid.get(s.process.pid, 0.0) for s in self.services if s.alive})
        own = os.times()
        out["benchmark process"] = own.user + own.system
        return out

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop()
        left = [p.name for p in self.procs if p.alive] + [s.name for s in self.services if s.alive]
        if left:
            print(f"warning: still running after stop: {left}", file=sys.stderr)
        if self._failed or os.environ.get("ATP_BENCH_KEEP"):
            print(f"logs kept in {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# -- the Redis under test: one Redis with N shards, or a Redis Cluster -------------------

STORE_SPECS = (
    "single, single/N (N shards on one Redis), cluster, cluster/N; any with :K for "
    "[redis] skus_per_script K (e.g. single:100000, a script per shard's part of a write)"
)


@dataclass
class ScriptCall:
    """One script call (EVALSHA) as Redis' SLOWLOG recorded it."""

    node: int  # port
    kind: str  # "write", "read", "advance" or "other"
    duration_us: int
    keys: int  # the call's key count
    skus: int = -1  # the skus it wrote or read, when known


@dataclass
class Store:
    """A Redis the service runs on in a benchmark (``Bench.start_store``): one redis-server
    with ``shards`` shards (1 = today's default there), or a local Redis Cluster of 3
    primaries (``shards`` 0 = its default, 16). ``ports`` are the primaries'."""

    spec: str
    url: str
    cluster: bool
    shards: int
    ports: list[int]
    pids: list[int] = field(default_factory=list)
    skus_per_script: int = 0  # 0: the config's default

    @staticmethod
    def parse(spec: str) -> tuple[bool, int, int]:
        """(cluster, shards, skus per script) of a spec (see STORE_SPECS)."""
        layout, _, step = spec.partition(":")
        kind, _, count = layout.partition("/")
        if (
            kind not in ("single", "cluster")
            or (count and not count.isdigit())
            or (step and not step.isdigit())
        ):
            raise ValueError(f"store {spec!r}: expected one of {STORE_SPECS}")
        return kind == "cluster", int(count or (0 if kind == "cluster" else 1)), int(step or 0)

    @property
    def redis_table(self) -> dict[str, object]:
        """The config's ``[redis]`` keys beside the url."""
        table: dict[str, object] = {"cluster": True} if self.cluster else {}
        if self.shards:
            table["shards"] = self.shards
        if self.skus_per_script:
            table["skus_per_script"] = self.skus_per_script
        return table

    @staticmethod
    def tag(spec: str) -> str:
        """A spec as a name part of topics, groups, files and order ids (no '/' or ':')."""
        return spec.replace("/", "-").replace(":", "-")

    @property
    def label(self) -> str:
        steps = f", {self.skus_per_script} skus per script" if self.skus_per_script else ""
        if self.cluster:
            return f"Redis Cluster, 3 primaries, {self.shards or 16} shards{steps}"
        return f"one Redis, {self.shards} shard{'s' if self.shards > 1 else ''}{steps}"

    def nodes(self) -> list[redis.Redis]:
        return [redis.Redis(port=port, socket_timeout=60) for port in self.ports]

    def each(self, call: Callable[[redis.Redis], Any]) -> list[Any]:
        out = []
        for client in self.nodes():
            with client:
                out.append(call(client))
        return out

    def flush(self) -> None:
        self.each(lambda c: c.flushall())

    def trace(self, max_len: int = 1_000_000, slower_than_us: int = 0) -> None:
        """From now on, every command (taking at least ``slower_than_us``) goes to each
        primary's SLOWLOG (cleared), and the command statistics start again."""
        for client in self.nodes():
            with client:
                client.config_set("slowlog-log-slower-than", slower_than_us)
                client.config_set("slowlog-max-len", max_len)
                client.slowlog_reset()
                client.config_resetstat()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the primaries' redis-server processes used so far."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def reset_stats(self) -> None:
        self.each(lambda c: c.config_resetstat())

    def script_calls(self, shas: dict[str, str]) -> list[ScriptCall]:
        """The EVALSHA/EVAL calls in every primary's SLOWLOG since ``trace``; ``shas`` names
        the scripts by their sha1. Raises if a SLOWLOG overflowed."""
        calls: list[ScriptCall] = []
        for port, client in zip(self.ports, self.nodes(), strict=True):
            with client:
                length = int(client.slowlog_len())
                limit = int(client.config_get("slowlog-max-len")["slowlog-max-len"])
                if length >= limit:
                    raise RuntimeError(f"the SLOWLOG of {port} is full ({length}): raise max_len")
                for entry in client.slowlog_get(-1):
                    # The command's first arguments, space-joined: EVALSHA <sha> <numkeys> ...
                    argv = bytes(entry.get("command", b"")).split(b" ", 3)
                    name = argv[0].upper()
                    if name not in (b"EVALSHA", b"EVAL") or len(argv) < 3:
                        continue
                    sha = argv[1].decode() if name == b"EVALSHA" else ""
                    calls.append(ScriptCall(port, shas.get(sha, "other"), int(entry["duration"]),
                                            int(argv[2])))  # fmt: skip
        return calls

    def command_stats(self) -> dict[str, dict[str, float]]:
        """Redis server-side time per command since the last ``trace``, summed over nodes."""
        total: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0.0, "usec": 0.0})
        for raw in self.each(lambda c: c.info("commandstats")):
            for name, v in raw.items():
                entry = total[name.removeprefix("cmdstat_")]
                entry["calls"] += float(v["calls"])
                entry["usec"] += float(v["usec"])
        return dict(total)

    def stop_tracing(self) -> None:
        for client in self.nodes():
            with client:
                client.config_set("slowlog-log-slower-than", 10_000)
                client.slowlog_reset()


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# -- wrk ------------------------------------------------------------------------------


def apt_install(package: str) -> bool:
    """Install a Debian package when we are root on a Debian-like machine; False otherwise."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    print(f"installing {package} (Debian package)...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)
    return True


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if apt_install("wrk"):
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit(
        "wrk (the HTTP load generator) is not installed: run `sudo apt-get install -y wrk` "
        "(Debian/Ubuntu) or `brew install wrk`, then retry"
    )


@dataclass
class WrkResult:
    requests_per_s: float
    latency_ms: dict[str, float]  # "50", "75", "90", "99" -> ms
    requests: int
    non_2xx: int
    socket_errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not rps or not total:
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    latency = {
        m.group(1): _ms(m.group(2))
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        latency_ms=latency,
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def run_wrk(
    url: str,
    *,
    connections: int,
    threads: int,
    duration_s: float,
    script: Path | None = None,
    headers: Sequence[str] = (),
) -> WrkResult:
    argv = [ensure_wrk(), "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration_s))}s",
            "--latency", "--timeout", "5s"]  # fmt: skip
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout)
    if result.non_2xx or result.socket_errors:
        raise RuntimeError(
            f"wrk saw {result.non_2xx} non-2xx responses and {result.socket_errors} socket errors "
            f"against {url}:\n{done.stdout}"
        )
    return result


def lua_get_paths(path: Path, paths: Sequence[str]) -> Path:
    """A wrk script cycling through ``paths`` (requests pre-formatted once per thread)."""
    table = ",\n".join(json.dumps(p) for p in paths)
    path.write_text(
        f"""
local paths = {{
{table}
}}
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function init(args)
  reqs = {{}}
  for k, p in ipairs(paths) do reqs[k] = wrk.format("GET", p) end
  i = ((tid or 0) * 7919) % #reqs
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
"""
    )
    return path


def lua_post(path: Path, body: bytes) -> Path:
    """A wrk script POSTing one JSON body."""
    path.write_text(
        f"""
wrk.method = "POST"
wrk.body = {json.dumps(body.decode())}
wrk.headers["Content-Type"] = "application/json"
"""
    )
    return path


# -- figures, table, JSON, chart ---------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        nan = float("nan")
        return {"median": nan, "min": nan, "max": nan}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclass
class Figure:
    """One measured figure beside its baseline.

    ``targets`` are (what, op, value) with what in {"ratio", "value"}; ratio is
    median(figure) / median(baseline).
    """

    name: str
    unit: str
    runs: list[float]
    baseline: str = ""
    baseline_runs: list[float] = field(default_factory=list)
    targets: list[tuple[str, str, float]] = field(default_factory=list)
    target_text: str = ""
    informative: bool = False  # a comparison row with no target

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def ratio(self) -> float | None:
        if not self.baseline_runs:
            return None
        base = statistics.median(self.baseline_runs)
        return self.median / base if base and self.runs else None

    @property
    def met(self) -> bool | None:
        if not self.targets:
            return None
        ok = True
        for what, op, value in self.targets:
            x = self.ratio if what == "ratio" else self.median
            if x is None or x != x:  # no ratio, or NaN (no samples)
                return None
            ok = ok and _compare(x, op, value)
        return ok

    def target(self) -> str:
        if self.target_text:
            return self.target_text
        parts = [
            f"{'x' if w == 'ratio' else ''}{op} {fmt(v)}{'' if w == 'ratio' else ' ' + self.unit}"
            for w, op, v in self.targets
        ]
        return ", ".join(parts)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "unit": self.unit, "runs": self.runs, **summary(self.runs),
            "baseline": self.baseline or None, "ratio": self.ratio, "target": self.target() or None,
            "met": self.met, "informative": self.informative, "targets": self.targets,
        }  # fmt: skip
        if self.baseline_runs:
            out["baseline_runs"] = self.baseline_runs
            out["baseline_summary"] = summary(self.baseline_runs)
        return out


def _compare(x: float, op: str, value: float) -> bool:
    return {"<": x < value, "<=": x <= value, ">": x > value, ">=": x >= value}[op]


def fmt(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    s = summary(values)
    if len(values) == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} [{fmt(s['min'])}-{fmt(s['max'])}]"


@dataclass
class Report:
    name: str
    size: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # chart series: panel title -> line label -> {x label: y}
    series: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    series_unit: dict[str, str] = field(default_factory=dict)
    series_kind: dict[str, str] = field(default_factory=dict)  # "line" (default) or "bar"
    parameters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def table(self) -> str:
        header = [
            "figure",
            "unit",
            "median [min-max]",
            "baseline",
            "baseline median [min-max]",
            "ratio",
            "target",
            "met",
        ]
        rows = [header]
        for f in self.figures:
            met = {True: "yes", False: "NO", None: "-" if not f.informative else "info"}[f.met]
            rows.append([
                f.name, f.unit, _spread(f.runs), f.baseline or "-", _spread(f.baseline_runs),
                "-" if f.ratio is None else f"{f.ratio:.2f}x", f.target() or "-", met,
            ])  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def finish(self) -> Path:
        env = environment()
        print()
        print(f"== {self.title} ({self.size}) ==")
        if self.parameters:
            print("parameters: " + ", ".join(f"{k}={v}" for k, v in self.parameters.items()))
        print(self.table())
        for note in self.notes:
            print(f"note: {note}")
        print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
        m = env["machine"]
        print(
            f"machine: {m['nproc']} cpus, {m['cpu_model']}, {m['memory_gb']} GB, {m['kernel']}; load {m['loadavg']}"
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        stem = RESULTS / f"{self.name}-{self.size}-{stamp}"
        payload = {
            "benchmark": self.name, "size": self.size, "title": self.title,
            "started": self.started, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": self.parameters, "figures": [f.as_json() for f in self.figures],
            "series": self.series, "notes": self.notes, "details": self.details, **env,
        }  # fmt: skip
        json_path = stem.with_suffix(".json")
        json_path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
        png = stem.with_suffix(".png")
        try:
            self.chart(png)
            print(f"wrote {json_path.relative_to(ROOT)} and {png.relative_to(ROOT)}")
        except ImportError:
            print(f"wrote {json_path.relative_to(ROOT)} (no chart: `pip install matplotlib`)")
        return json_path

    def chart(self, path: Path) -> None:
        """Series panels (latency percentiles, stage shares, ...) and one bar panel per
        targeted figure: measured vs baseline, with min-max whiskers and the target."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels: list[Callable[[Any], None]] = []
        for title, lines in self.series.items():
            kind = self.series_kind.get(title, "line")
            panels.append(_series_panel(title, lines, self.series_unit.get(title, ""), kind))
        for figure in self.figures:
            if not figure.informative:
                panels.append(_bar_panel(figure))
        cols = min(3, len(panels)) or 1
        rows = -(-len(panels) // cols) or 1
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
        for ax, draw in zip(axes.flat, panels, strict=False):
            draw(ax)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(f"{self.title} ({self.size}) - {self.started}", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        fig.savefig(path, dpi=90)
        plt.close(fig)


def _series_panel(
    title: str, lines: dict[str, dict[str, float]], unit: str, kind: str
) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        if kind == "bar":
            labels = list(next(iter(lines.values())))
            width = 0.8 / max(1, len(lines))
            for k, (label, points) in enumerate(lines.items()):
                xs = [i + k * width for i in range(len(labels))]
                ax.bar(xs, [points.get(x, 0.0) for x in labels], width, label=label)
            ax.set_xticks([i + width * (len(lines) - 1) / 2 for i in range(len(labels))])
            ax.set_xticklabels(labels, fontsize=7, rotation=20)
            ax.grid(axis="y", alpha=0.3)
        else:
            for label, points in lines.items():
                ax.plot(list(points), list(points.values()), marker="o", label=label)
            ax.grid(alpha=0.3)
        ax.set_title(_wrap(title), fontsize=8)
        ax.set_ylabel(unit)
        if len(lines) > 1:
            ax.legend(fontsize=7)

    return draw


def _bar_panel(figure: Figure) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        if not figure.runs:
            ax.set_title(_wrap(figure.name.strip()), fontsize=8)
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
            return
        labels = ["measured"]
        values = [figure.runs]
        if figure.baseline_runs:
            labels.append(_wrap(figure.baseline, 24))
            values.append(figure.baseline_runs)
        meds = [statistics.median(v) for v in values]
        low = [m - min(v) for m, v in zip(meds, values, strict=True)]
        high = [max(v) - m for m, v in zip(meds, values, strict=True)]
        colors = ["tab:blue", "tab:gray"]
        ax.bar(labels, meds, yerr=[low, high], capsize=4, color=colors[: len(labels)])
        for what, _op, value in figure.targets:
            if what == "value":
                ax.axhline(value, color="tab:red", linestyle="--", linewidth=1, label="target")
                ax.legend(fontsize=7)
        ratio = f" (x{figure.ratio:.2f})" if figure.ratio is not None else ""
        target = f"; target {figure.target()}" if figure.targets else ""
        ax.set_title(_wrap(figure.name.strip() + ratio + target), fontsize=8)
        ax.set_ylabel(figure.unit)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="y", alpha=0.3)

    return draw


def _wrap(text: str, width: int = 48) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)


def _json_default(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[call-overload]
    return str(value)


# -- versions and machine ------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command_version(argv: Sequence[str], pattern: str) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "unknown"


_ENV_CACHE: dict[str, Any] = {}


def environment() -> dict[str, Any]:
    if _ENV_CACHE:
        return _ENV_CACHE
    import confluent_kafka

    from atp_service.local.services import broker_binary

    try:
        broker = _command_version([broker_binary(), "--version"], r"tansu (\S+)")
    except Exception:
        broker = "unknown"
    versions = {
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "msgspec": _version("msgspec"),
        "litestar": _version("litestar"),
        "granian": _version("granian"),
        "confluent-kafka": _version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "redis-py": _version("redis"),
        "redis-server": _command_version(["redis-server", "--version"], r"v=(\S+)"),
        "tansu": broker,
        "wrk": _command_version(["wrk", "-v"], r"wrk (\S+)"),
        "matplotlib": _version("matplotlib"),
    }
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    commit = "unknown"
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if dirty:
            commit += "+dirty"
    _ENV_CACHE.update(
        versions=versions,
        machine={
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model,
            "memory_gb": memory_gb,
            "kernel": platform.release(),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        },
        commit=commit,
    )
    return _ENV_CACHE


# -- small helpers -------------------------------------------------------------------------


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    print(f"  {label}: {time.perf_counter() - started:.1f}s", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


# -- the real fold and write, without Kafka ------------------------------------------------


def direct_projector(settings: Settings) -> Any:
    """The consumer's own ConsumerLoop, for ``apply(events, offsets)`` with no broker.

    Same store, projector, fold and write script as ``atp consume``; only the Kafka consumer
    and producer are absent (apply() uses neither).
    """
    from atp_service.model import projector_for
    from atp_service.runtime import consumer_options, store_for
    from streams.consumer import ConsumerLoop

    options = consumer_options(settings)
    return ConsumerLoop(None, None, store_for(settings), projector_for(settings), options)  # type: ignore[arg-type]


def apply_events(projector: Any, events: Sequence[Any], batch: int = 5000) -> None:
    """Fold decoded events into Redis through the consumer's apply(), in consumer-sized batches."""
    for start in range(0, len(events), batch):
        projector.apply(list(events[start : start + batch]), {})


def stored_offsets_total(client: redis.Redis, group_id: str) -> int:
    from atp_service.store import keys

    raw: dict[bytes, bytes] = client.hgetall(keys.SINGLE.offsets_key(group_id))  # type: ignore[assignment]
    return sum(int(v) for v in raw.values())


def produce_all(
    bootstrap: str, messages: Sequence[tuple[str, bytes, bytes]], linger_ms: int = 20
) -> float:
    """Produce (topic, key, value) messages; returns the seconds it took (flushed)."""
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": linger_ms, "enable.idempotence": True,
        "partitioner": "murmur2_random",  # as the service hashes keys
        "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576, "compression.type": "none",
    })  # fmt: skip
    started = time.perf_counter()
    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} messages were not delivered to the broker")
    return time.perf_counter() - started


# -- where the consumer's writes got to ---------------------------------------------------


def produce_tracked(
    bootstrap: str,
    messages: Sequence[tuple[str, bytes, bytes]],
    producer: Any = None,
    linger_ms: int = 20,
) -> dict[str, int]:
    """Produce (topic, key, value) messages, flushed; returns the next offset of every
    partition written to, keyed as the store keeps offsets ("topic\x1fpartition"), from the
    delivery reports: a consumer has applied the messages once its stored offsets reach these.

    (Not the broker's high watermarks: Tansu 0.6.0 answers the last batch's base offset + 1.)
    """
    from confluent_kafka import Producer

    from streams.consumer.options import offset_field

    own = producer is None
    if own:
        producer = Producer({
            "bootstrap.servers": bootstrap, "linger.ms": linger_ms, "enable.idempotence": True,
            "partitioner": "murmur2_random", "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "none",
        })  # fmt: skip
    ends: dict[str, int] = {}
    failed: list[str] = []

    def delivered(err: Any, message: Any) -> None:
        if err is not None:
            failed.append(str(err))
            return
        name = offset_field(message.topic(), message.partition())
        ends[name] = max(ends.get(name, 0), message.offset() + 1)

    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left or failed:
        raise RuntimeError(f"{left} messages not delivered; errors: {failed[:3]}")
    return ends


def count_messages(bootstrap: str, topic: str, idle_s: float = 2.0, timeout_s: float = 60) -> int:
    """Messages in ``topic``, read from the beginning of every partition (no group)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "atp-bench-count",
                         "enable.auto.commit": False, "enable.partition.eof": False})  # fmt: skip
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        count, deadline, last = 0, time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() - last < idle_s and time.monotonic() < deadline:
            got = [m for m in consumer.consume(1000, 0.2) if m.error() is None]
            if got:
                count += len(got)
                last = time.monotonic()
        return count
    finally:
        consumer.close()


class LandedWrites:
    """Wraps a store's ``write``: after each write that landed (no conflicts), when it
    returned and the offsets stored so far. ``reached(target)`` is the moment the stored
    offsets first covered ``target`` (from ``produce_tracked``): every message up to there
    was folded and written, with everything its write carries (states, projection, re-plans,
    outbox), in one atomic write."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}
        self.history: list[tuple[float, dict[str, int]]] = []
        self._landed = threading.Condition()

    def wrap(self, write: Callable[..., Any]) -> Callable[..., Any]:
        def landed(changes: Any, now_ms: int) -> Any:
            conflicts = write(changes, now_ms)
            if not conflicts and changes.offsets:
                at = time.perf_counter()
                with self._landed:
                    for name, offset in changes.offsets.items():
                        if offset > self.offsets.get(name, 0):
                            self.offsets[name] = offset
                    self.history.append((at, dict(self.offsets)))
                    self._landed.notify_all()
            return conflicts

        return landed

    def reached(self, target: dict[str, int]) -> float | None:
        with self._landed:
            for at, offsets in self.history:
                if all(offsets.get(name, 0) >= offset for name, offset in target.items()):
                    return at
        return None

    def wait(
        self, target: dict[str, int], timeout_s: float, failed: Callable[[], BaseException | None]
    ) -> float:
        """Block until the stored offsets cover ``target``; the perf_counter time it happened."""
        deadline = time.monotonic() + timeout_s
        while (at := self.reached(target)) is None:
            error = failed()
            if error is not None:
                raise RuntimeError(f"the stream projector failed: {error!r}")
            if time.monotonic() > deadline:
                behind = {
                    n: (self.offsets.get(n, 0), o)
                    for n, o in target.items()
                    if self.offsets.get(n, 0) < o
                }
                raise RuntimeError(f"stored offsets did not reach the target: {behind}")
            with self._landed:  # woken by the next landed write (the time is the writer's)
                self._landed.wait(0.2)
        return at
