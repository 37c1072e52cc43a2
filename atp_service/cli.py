"""The ``atp`` command: consume, serve, dev (and the operator tools as they come)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from atp_service.config import ConfigError, Settings, load_settings

log = logging.getLogger("atp")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"atp: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def consume(_: argparse.Namespace) -> int:
    from atp_service.runtime import build_consumer_loop
    from streams.consumer import LedgerAhead

    settings = _settings()
    stop = _stop_on_signals()
    loop = build_consumer_loop(settings, should_stop=stop.is_set)
    if settings.consumer.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.consumer.metrics_port)
        except OSError as exc:  # metrics are not worth refusing to consume over
            log.warning("metrics port %d unavailable: %s", settings.consumer.metrics_port, exc)
    log.info("consuming %s", ", ".join(loop.options.topics))
    try:
        loop.run(stop)
    except LedgerAhead as exc:
        print(f"atp consume: {exc}", file=sys.stderr)
        return 3
    loop.finish()
    log.info("stopped after %d messages", loop.stats.consumed)
    return 0


def serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    from atp_service.runtime import check_redis_mode

    # Fail fast, with the message, before any worker starts.
    check_redis_mode(_settings())
    Granian(
        "atp_service.http.app:app_from_environment",
        factory=True,
        interface=Interfaces.ASGI,
        address=args.host,
        port=args.port,
        workers=args.workers,
        loop=Loops(args.loop),
        log_access=False,
    ).serve()
    return 0


def dev(args: argparse.Namespace) -> int:
    from atp_service.local.dev import run_dev

    return run_dev(port=args.port, skus=args.skus, rate=args.rate)


def rebuild(_: argparse.Namespace) -> int:
    from rich.console import Console

    from atp_service.ops.ledger_tools import rebuild as run_rebuild

    return run_rebuild(_settings(), Console())


def verify(_: argparse.Namespace) -> int:
    from rich.console import Console

    from atp_service.ops.ledger_tools import verify as run_verify

    return run_verify(_settings(), Console(width=160))


def ledger(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from rich.console import Console

    from atp_service.ops import ledger_tools

    console = Console(width=200)
    if args.ledger_command == "history":
        return ledger_tools.history(_settings(), console, args.sku, args.location)
    try:
        moment = datetime.fromisoformat(args.time.replace("Z", "+00:00"))
    except ValueError:
        print(f"atp ledger at: --time {args.time!r} is not an RFC 3339 timestamp", file=sys.stderr)
        return 2
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return ledger_tools.at_time(_settings(), console, args.channel, args.sku, moment)


def import_stock(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress

    from atp_service.ops import importer

    as_of = datetime.now(UTC)
    if args.as_of:
        try:
            as_of = datetime.fromisoformat(args.as_of.replace("Z", "+00:00"))
        except ValueError:
            print(
                f"atp import: --as-of {args.as_of!r} is not an RFC 3339 timestamp", file=sys.stderr
            )
            return 2
        as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    settings = _settings()
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("snapshots", total=None)
        try:
            done = importer.run(
                settings, Path(args.file), as_of, args.full,
                lambda n, total: progress.update(task, completed=n, total=total),
            )  # fmt: skip
        except importer.ImportRefused as exc:
            print(f"atp import: {exc}; nothing was produced", file=sys.stderr)
            return 2
    print(
        f"imported {done.rows} rows: {done.skus} skus at {done.locations} locations, "
        f"{done.snapshots} snapshots ({done.zeroed} zeroed), as of {as_of.isoformat()}"
    )
    return 0


def dead_letters(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from rich.console import Console

    from atp_service.ops import dead_letters as letters

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            print(
                f"atp dead-letters: --since {args.since!r} is not an RFC 3339 timestamp",
                file=sys.stderr,
            )
            return 2
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    settings = _settings()
    found = letters.read(settings, since=since, error=args.error)
    console = Console(width=200)
    if args.dead_letters_command == "list":
        letters.print_list(console, found)
        return 0
    if not found:
        console.print("no dead letter matches the filter; nothing replayed")
        return 0
    count = letters.replay(settings, found)
    console.print(f"replayed {count} dead letters to their source topics")
    return 0


def report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from atp_service.ops.report import run_report

    return run_report(_settings(), Console(width=160), sku=args.sku)


def _default_loop() -> str:
    import importlib.util

    # uvloop is in the runtime set on Linux and macOS; granian's own "auto" would pick it too,
    # but saying it here makes `atp serve --help` tell which loop runs.
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def main(argv: Sequence[str] | None = None) -> int:
    from streams.logs import configure

    # Logging is set up before the config file is read, so that its errors are logged too.
    configure(os.environ.get("ATP_LOG_LEVEL", "INFO"), os.environ.get("ATP_LOG_FORMAT", "json"))
    parser = argparse.ArgumentParser(prog="atp", description="Inventory availability to promise")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("consume", help="fold the event streams into Redis").set_defaults(
        run=consume
    )
    p_serve = commands.add_parser("serve", help="serve the HTTP API")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--workers", type=int, default=1)
    p_serve.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default=_default_loop(),
        help="event loop of each worker (default here: %(default)s; uvloop where installed)",
    )
    p_serve.set_defaults(run=serve)
    p_dev = commands.add_parser("dev", help="the whole stack locally with a demo feed")
    p_dev.add_argument("--port", type=int, default=8000)
    p_dev.add_argument("--skus", type=int, default=300)
    p_dev.add_argument("--rate", type=float, default=50.0, help="demo events per second")
    p_dev.set_defaults(run=dev)
    commands.add_parser(
        "rebuild", help="rebuild the Redis projection from the ledger (consumers stopped)"
    ).set_defaults(run=rebuild)
    commands.add_parser(
        "verify", help="compare Redis with the ledger; exit 1 on any difference"
    ).set_defaults(run=verify)
    p_ledger = commands.add_parser("ledger", help="questions for the audit ledger")
    questions = p_ledger.add_subparsers(dest="ledger_command", required=True)
    p_history = questions.add_parser("history", help="what happened to a sku (at a location)")
    p_history.add_argument("--sku", required=True)
    p_history.add_argument("--location")
    p_at = questions.add_parser("at", help="available_to_sell of (channel, sku) at a time")
    p_at.add_argument("--channel", required=True)
    p_at.add_argument("--sku", required=True)
    p_at.add_argument("--time", required=True, help="RFC 3339, e.g. 2026-11-27T10:00:00Z")
    p_ledger.set_defaults(run=ledger)
    p_import = commands.add_parser("import", help="a stock export (CSV or Parquet) as snapshots")
    p_import.add_argument("file", help="columns sku, location, bin, status, quantity")
    p_import.add_argument("--as-of", help="the snapshots' time, RFC 3339 (default: now)")
    p_import.add_argument(
        "--full", action="store_true", help="zero what the file does not list at its locations"
    )
    p_import.set_defaults(run=import_stock)
    p_dead = commands.add_parser("dead-letters", help="list dead letters, or replay them")
    dead_commands = p_dead.add_subparsers(dest="dead_letters_command", required=True)
    for name, what in (
        ("list", "print the dead letters"),
        ("replay", "produce them again to their source topics"),
    ):
        p = dead_commands.add_parser(name, help=what)
        p.add_argument("--since", help="only those dead-lettered at or after this RFC 3339 time")
        p.add_argument("--error", help="only those whose reason contains this text")
    p_dead.set_defaults(run=dead_letters)
    p_report = commands.add_parser("report", help="the control tower's figures in the terminal")
    p_report.add_argument("--sku", help="also show this sku per location and channel")
    p_report.set_defaults(run=report)
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except ConfigError as exc:  # found once Redis answered (e.g. `redis.cluster` wrong)
        print(f"atp {args.command}: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    raise SystemExit(main())
