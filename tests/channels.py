"""A channel as allocation.network.Network.of takes it, for tests that build networks by hand."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Channel:
    name: str
    priority: int
    locations: tuple[str, ...]
    # The config's defaults (atp_service/config.py, ChannelSettings).
    safety_stock: int = 0
    inbound_horizon_days: int = 14
    # Contract section 11; the defaults leave section 1 unchanged.
    safety_stock_percent: int = 0
    min_available: int = 0
    max_available: int | None = None
    max_order_quantity: int | None = None
    low_stock_threshold: int = 0
