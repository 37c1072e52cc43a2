"""Request and response bodies of the HTTP API (the API's contract, not the event schema)."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from litestar.params import Parameter

from allocation.kits import MAX_COMPONENT_QUANTITY, MAX_COMPONENTS
from streams.events import Sku
from streams.projector import Availability

# Path parameters, as the document states them and the server checks them. A sku in a path
# cannot hold "/" (it would be two segments); in a body it can.
SKU_IN_PATH: Final = r"^[^\x00-\x1f\x7f/]{1,200}$"
CHANNEL_NAME: Final = r"^[A-Za-z0-9_.\-]{1,64}$"
SkuParam = Annotated[
    str,
    Parameter(
        pattern=SKU_IN_PATH,
        min_length=1,
        max_length=200,
        description="1 to 200 printable characters, no /",
    ),
]
ChannelParam = Annotated[str, Parameter(pattern=CHANNEL_NAME, min_length=1, max_length=64)]


class SkuQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    skus: Annotated[list[Sku], msgspec.Meta(min_length=1, max_length=1000)]


class SafetyStock(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    quantity: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]


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
    # Contract section 11.
    safety_stock_percent: int = 0
    min_available: int = 0
    max_available: int | None = None
    max_order_quantity: int | None = None
    low_stock_threshold: int = 0


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


class Component(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sku: Sku
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_COMPONENT_QUANTITY)]


class KitBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    components: Annotated[
        list[Component],
        msgspec.Meta(
            min_length=1,
            max_length=MAX_COMPONENTS,
            description="no sku twice, none a kit itself; quantities 1 to 1,000",
        ),
    ]
