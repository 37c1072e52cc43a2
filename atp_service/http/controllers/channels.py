"""GET /v1/channels: the channel configuration."""

from __future__ import annotations

from litestar import Controller, get

from atp_service.config import Settings
from atp_service.http.auth import require
from atp_service.http.problems import problem_responses
from atp_service.http.schemas import ChannelList, ChannelView


class ChannelController(Controller):
    path = "/v1/channels"
    tags = ["channels"]

    @get(
        "/",
        responses=problem_responses(401, 403),
        guards=[require("availability:read")],
        summary="The channel configuration",
    )
    async def list_channels(self, settings: Settings) -> ChannelList:
        return ChannelList(
            channels=[
                ChannelView(
                    name=c.name,
                    priority=c.priority,
                    locations=list(c.locations),
                    safety_stock=c.safety_stock,
                    inbound_horizon_days=c.inbound_horizon_days,
                    safety_stock_overrides=dict(c.safety_stock_overrides),
                    safety_stock_percent=c.safety_stock_percent,
                    min_available=c.min_available,
                    max_available=c.max_available,
                    max_order_quantity=c.max_order_quantity,
                    low_stock_threshold=c.low_stock_threshold,
                )
                for c in settings.channels
            ]
        )
