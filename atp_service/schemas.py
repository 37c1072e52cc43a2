"""Request and response bodies of the HTTP API (the API's contract, not the event schema)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from streams.events import Sku
from streams.projector import Availability


class SkuQuery(msgspec.Struct, frozen=True):
    skus: Annotated[list[Sku], msgspec.Meta(min_length=1, max_length=1000)]


class AvailabilityList(msgspec.Struct, frozen=True):
    channel: str
    items: list[Availability]


class ChannelView(msgspec.Struct, frozen=True):
    name: str
    priority: int
    locations: list[str]
    safety_stock: int
    inbound_horizon_days: int
    safety_stock_overrides: dict[str, int]


class ChannelList(msgspec.Struct, frozen=True):
    channels: list[ChannelView]


class Health(msgspec.Struct, frozen=True):
    status: str


class ChangeItem(msgspec.Struct, frozen=True):
    sku: str
    available_to_sell: int
    as_of: str


class ChangesPage(msgspec.Struct, frozen=True):
    items: list[ChangeItem]
    next_cursor: str
