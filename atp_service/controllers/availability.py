"""GET /v1/availability/{channel}/{sku} and POST /v1/availability/{channel}/query."""

from __future__ import annotations

import re
from typing import Final

import msgspec
from litestar import Controller, Response, get, post
from litestar.exceptions import NotFoundException, ValidationException

from atp_service.auth import require
from atp_service.config import Settings
from atp_service.reader import AvailabilityReader
from atp_service.schemas import AvailabilityList, SkuQuery
from streams.projector import Availability

_SKU: Final = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")


def known_channel(settings: Settings, channel: str) -> str:
    if settings.channel(channel) is None:
        raise NotFoundException(detail=f"unknown channel {channel!r}")
    return channel


def check_sku(sku: str) -> str:
    if not _SKU.match(sku):
        raise ValidationException(detail="sku must be 1 to 200 printable characters")
    return sku


class AvailabilityController(Controller):
    path = "/v1/availability/{channel:str}"
    guards = [require("availability:read")]
    tags = ["availability"]

    @get("/{sku:str}", summary="Available to sell and the atp timeline of one sku")
    async def one(
        self, channel: str, sku: str, settings: Settings, reader: AvailabilityReader
    ) -> Response[Availability]:
        known_channel(settings, channel)
        check_sku(sku)
        return Response(content=await reader.one(channel, sku), media_type="application/json")  # type: ignore[arg-type]

    @post("/query", summary="The same for up to 1000 skus, in the order asked", status_code=200)
    async def query(
        self, channel: str, data: SkuQuery, settings: Settings, reader: AvailabilityReader
    ) -> Response[AvailabilityList]:
        known_channel(settings, channel)
        documents = await reader.many(channel, data.skus)
        body = b"".join(
            (b'{"channel":', msgspec.json.encode(channel), b',"items":[', b",".join(documents), b"]}")
        )
        return Response(content=body, media_type="application/json")  # type: ignore[arg-type]
