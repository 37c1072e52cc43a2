"""Supply and channel network held as arrays: the shared input of the projection and allocation.

Shapes: S skus, L locations, C channels, N inbound lines. Quantities are int64 units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]

NONE = -1  # an index (day, location) that does not exist
NO_CAP = 1 << 62  # max_available / max_order_quantity not set


class ChannelLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def locations(self) -> Sequence[str]: ...
    @property
    def safety_stock(self) -> int: ...
    @property
    def inbound_horizon_days(self) -> int: ...


# The buffers of contract section 11, optional on a channel (absent: section 1 unchanged).
_BUFFERS = {
    "safety_stock_percent": 0,
    "min_available": 0,
    "max_available": None,
    "max_order_quantity": None,
    "low_stock_threshold": 0,
}


def _buffer(channel: ChannelLike, name: str) -> int:
    value = getattr(channel, name, _BUFFERS[name])
    return NO_CAP if value is None else int(value)


@dataclass(frozen=True)
class Network:
    """The channels as arrays, in configuration order.

    Attributes:
        channels: channel names, index c.
        locations: every location of any channel, index l.
        mask: (C, L) True where location l is in channel c's network.
        rank: (C, L) position of l in c's preference order, -1 where not in the network.
        priority: (C,) 1 = highest.
        horizon: (C,) inbound horizon in days.
        safety_stock: (C,) channel default safety stock.
        safety_stock_percent, min_available, max_available, max_order_quantity,
            low_stock_threshold: (C,) the buffers of contract section 11 (NO_CAP: none).
    """

    channels: tuple[str, ...]
    locations: tuple[str, ...]
    mask: Bools
    rank: Ints
    priority: Ints
    horizon: Ints
    safety_stock: Ints
    safety_stock_percent: Ints
    min_available: Ints
    max_available: Ints
    max_order_quantity: Ints
    low_stock_threshold: Ints

    @classmethod
    def of(cls, channels: Sequence[ChannelLike]) -> Network:
        locations: dict[str, int] = {}
        for channel in channels:
            for location in channel.locations:
                locations.setdefault(location, len(locations))
        rank = np.full((len(channels), len(locations)), -1, dtype=np.int64)
        for c, channel in enumerate(channels):
            for position, location in enumerate(channel.locations):
                rank[c, locations[location]] = position
        return cls(
            channels=tuple(channel.name for channel in channels),
            locations=tuple(locations),
            mask=rank >= 0,
            rank=rank,
            priority=np.array([ch.priority for ch in channels], dtype=np.int64),
            horizon=np.array([ch.inbound_horizon_days for ch in channels], dtype=np.int64),
            safety_stock=np.array([ch.safety_stock for ch in channels], dtype=np.int64),
            **{
                name: np.array([_buffer(ch, name) for ch in channels], dtype=np.int64)
                for name in _BUFFERS
            },
        )

    def channel_index(self, name: str) -> int:
        return self.channels.index(name)

    def location_index(self) -> dict[str, int]:
        return {location: i for i, location in enumerate(self.locations)}


@dataclass(frozen=True)
class Supply:
    """Raw quantities of S skus.

    Attributes:
        on_hand: (S, L) sellable units per sku and location (may be negative).
        reserved: (S, L) open, unexpired reservations per sku and location.
        safety_stock: (S, C) effective safety stock per sku and channel.
        inbound_sku, inbound_location, inbound_quantity, inbound_eta: (N,) open inbound
            lines; eta in days since the epoch (may be in the past).
    """

    on_hand: Ints
    reserved: Ints
    safety_stock: Ints
    inbound_sku: Ints
    inbound_location: Ints
    inbound_quantity: Ints
    inbound_eta: Ints

    @property
    def n_skus(self) -> int:
        return int(self.on_hand.shape[0])
