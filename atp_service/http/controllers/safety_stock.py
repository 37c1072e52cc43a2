"""PUT and DELETE /v1/channels/{channel}/safety-stock/{sku} (admin)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, put

from atp_service.allocator import Allocator, Busy, PublishFailed
from atp_service.config import Settings
from atp_service.http.auth import require
from atp_service.http.controllers.availability import known_channel
from atp_service.http.problems import failure, problem_responses
from atp_service.http.schemas import ChannelParam, SafetyStock, SkuParam


class SafetyStockSet(msgspec.Struct, frozen=True):
    channel: str
    sku: str
    safety_stock: int | None


class SafetyStockController(Controller):
    path = "/v1/channels/{channel:str}/safety-stock/{sku:str}"
    guards = [require("admin")]
    tags = ["channels"]

    @put(
        "/",
        responses=problem_responses(400, 401, 403, 404, 503),
        summary="Set a per-sku safety stock override; recomputed at once",
    )
    async def set_override(
        self, request: Request[Any, Any, Any], channel: ChannelParam, sku: SkuParam, data: SafetyStock,
        settings: Settings, allocator: Allocator,
    ) -> Response[SafetyStockSet]:  # fmt: skip
        known_channel(settings, channel)
        try:
            await allocator.set_safety_stock(channel, sku, data.quantity)
        except (Busy, PublishFailed) as exc:
            return failure(request, exc)
        return Response(SafetyStockSet(channel, sku, data.quantity))

    @delete(
        "/",
        responses=problem_responses(400, 401, 403, 404, 503),
        summary="Remove the override (back to the configured value)",
        status_code=200,
    )
    async def remove_override(
        self,
        request: Request[Any, Any, Any],
        channel: ChannelParam,
        sku: SkuParam,
        settings: Settings,
        allocator: Allocator,
    ) -> Response[SafetyStockSet]:
        known_channel(settings, channel)
        try:
            await allocator.set_safety_stock(channel, sku, None)
        except (Busy, PublishFailed) as exc:
            return failure(request, exc)
        return Response(SafetyStockSet(channel, sku, None))
