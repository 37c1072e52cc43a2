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
    """

    channels: tuple[str, ...]
    locations: tuple[str, ...]
    mask: Bools
    rank: Ints
    priority: Ints
    horizon: Ints
    safety_stock: Ints

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
