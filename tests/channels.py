"""A channel as allocation.network.Network.of takes it, for tests that build networks by hand."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Channel:
    name: str
    priority: int
    locations: tuple[str, ...]
    safety_stock: int
    inbound_horizon_days: int
