"""`atp report`: the control tower's figures as rich tables in the terminal.

The figures are those of `GET /v1/ops/summary` (and `GET /v1/ops/sku/{sku}` with a sku),
gathered by :mod:`atp_service.ops.tower` straight from Redis; no API needs to be running.
"""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aredis
from rich.console import Console
from rich.table import Table

from atp_service.config import Settings
from atp_service.ops.tower import gather_sku, gather_summary
from atp_service.ops.views import SkuView, Summary


def _na(value: object) -> str:
    return "n/a" if value is None else str(value)


async def _gather(settings: Settings, sku: str | None) -> tuple[Summary, SkuView | None]:
    client = aredis.Redis.from_url(
        settings.redis.url, socket_connect_timeout=2.0, socket_timeout=30.0
    )
    try:
        summary = await gather_summary(client, settings)
        view = await gather_sku(client, settings, sku) if sku else None
        return summary, view
    finally:
        await client.aclose()


def run_report(settings: Settings, console: Console, sku: str | None = None) -> int:
    """Print the figures; 0 when printed, 1 when Redis cannot be read."""
    try:
        summary, view = asyncio.run(_gather(settings, sku))
    except (redis.RedisError, OSError) as exc:
        console.print(f"[red]atp report: cannot read Redis at {settings.redis.url}: {exc}[/red]")
        return 1
    print_summary(console, summary)
    if view is not None:
        print_sku(console, view)
    return 0


def print_summary(console: Console, s: Summary) -> None:
    console.print(
        f"[bold]atp control tower[/bold]  as of {s.generated_at}, {s.skus_scanned} skus scanned"
        + (
            " [yellow](truncated: the counts cover the first skus only)[/yellow]"
            if s.truncated
            else ""
        )
    )
    health = Table(title="Stream health")
    for name in ("consumer lag", "visible p50 ms", "visible p99 ms", "dead letters (1 h)",
                 "open reservations", "live consumers"):  # fmt: skip
        health.add_column(name, justify="right")
    live = sum(1 for c in s.consumers if not c.stale)
    stale = len(s.consumers) - live
    health.add_row(
        _na(s.lag_total) if s.lag_total is not None else "[red]no consumer reports[/red]",
        _na(s.visible_p50_ms),
        _na(s.visible_p99_ms),
        str(s.dead_letters_last_hour),
        str(s.open_reservations),
        f"{live}" + (f" (+{stale} stale)" if stale else ""),
    )
    console.print(health)

    channels = Table(title="Channels")
    channels.add_column("channel")
    channels.add_column("skus", justify="right")
    channels.add_column("at zero", justify="right")
    channels.add_column("e.g.")
    channels.add_column("under safety stock", justify="right")
    channels.add_column("e.g.")
    for c in s.channels:
        channels.add_row(
            c.channel, str(c.skus), str(c.at_zero), ", ".join(c.at_zero_examples),
            str(c.under_safety_stock), ", ".join(c.under_safety_stock_examples),
        )  # fmt: skip
    console.print(channels)

    lag = Table(title="Consumer lag per partition")
    lag.add_column("topic/partition")
    lag.add_column("lag", justify="right")
    for p in s.lag:
        lag.add_row(p.partition, str(p.lag))
    console.print(lag)

    consumers = Table(title="Consumers")
    for name in ("instance", "age s", "lag", "p50 ms", "p99 ms", "consumed", "applied",
                 "duplicates", "dead-lettered"):  # fmt: skip
        consumers.add_column(name, justify="left" if name == "instance" else "right")
    for w in s.consumers:
        consumers.add_row(
            w.instance + (" [yellow](stale)[/yellow]" if w.stale else ""), str(w.age_s),
            str(w.lag), _na(w.visible_p50_ms), _na(w.visible_p99_ms), str(w.consumed),
            str(w.applied), str(w.duplicates), str(w.dead_lettered),
        )  # fmt: skip
    console.print(consumers)

    dead = Table(title="Dead letters by reason, last hour")
    dead.add_column("reason", overflow="fold")
    dead.add_column("count", justify="right")
    for d in s.dead_letters_by_reason:
        dead.add_row(d.reason, str(d.count))
    console.print(dead)

    held = Table(title="Oldest open reservations (by expiry; never-expiring last)")
    for name in ("reservation", "sku", "channel", "location", "quantity", "expires at"):
        held.add_column(name, justify="right" if name == "quantity" else "left")
    for r in s.oldest_open_reservations:
        held.add_row(
            r.reservation_id, r.sku, r.channel, r.location, str(r.quantity), r.expires_at or "never"
        )
    console.print(held)


def print_sku(console: Console, v: SkuView) -> None:
    console.print(f"[bold]sku {v.sku}[/bold]" + ("" if v.known else " (never seen: reads 0)"))
    statuses = sorted({status for loc in v.locations for status in loc.other})
    locations = Table(title=f"{v.sku} per location")
    locations.add_column("location")
    locations.add_column("on hand", justify="right")
    for status in statuses:
        locations.add_column(status, justify="right")
    locations.add_column("reserved", justify="right")
    locations.add_column("inbound", justify="right")
    for loc in v.locations:
        locations.add_row(
            loc.location, str(loc.on_hand), *(str(loc.other.get(st, 0)) for st in statuses),
            str(loc.reserved), str(loc.inbound),
        )  # fmt: skip
    console.print(locations)

    channels = Table(title=f"{v.sku} per channel")
    for name in ("channel", "available to sell", "on hand", "reserved", "safety stock", "as of"):
        channels.add_column(name, justify="left" if name in ("channel", "as of") else "right")
    for c in v.channels:
        channels.add_row(
            c.channel, str(c.available_to_sell), str(c.on_hand), str(c.reserved),
            str(c.safety_stock), c.as_of or "never projected",
        )  # fmt: skip
    console.print(channels)

    inbound = Table(title=f"{v.sku} inbound")
    for name in ("inbound line", "location", "quantity", "eta"):
        inbound.add_column(name, justify="right" if name == "quantity" else "left")
    for i in v.inbound:
        inbound.add_row(i.inbound_id, i.location, str(i.quantity), i.eta)
    console.print(inbound)

    held = Table(title=f"{v.sku} open reservations")
    for name in ("reservation", "channel", "location", "quantity", "expires at"):
        held.add_column(name, justify="right" if name == "quantity" else "left")
    for r in v.reservations:
        held.add_row(
            r.reservation_id, r.channel, r.location, str(r.quantity), r.expires_at or "never"
        )
    console.print(held)
