"""GET /v1/locations: each location's daily capacity and what today's allocations took."""

from __future__ import annotations

import time

import msgspec
from litestar import Controller, get

from atp_service.allocator import Allocator
from atp_service.config import Settings
from atp_service.http.auth import require
from atp_service.http.problems import problem_responses
from atp_service.ops.views import CapacityView, capacity_views
from streams.state import US_PER_DAY, from_day


class LocationList(msgspec.Struct, frozen=True):
    day: str  # the UTC day counted
    locations: list[CapacityView]


class LocationController(Controller):
    path = "/v1/locations"
    tags = ["channels"]

    @get(
        "/",
        responses=problem_responses(401, 403, 503),
        guards=[require("availability:read")],
        summary="Each configured location's daily capacity, and what today took of it",
    )
    async def list_locations(self, settings: Settings, allocator: Allocator) -> LocationList:
        today = time.time_ns() // 1000 // US_PER_DAY
        used = await allocator.store.capacity_used(today)
        return LocationList(
            day=from_day(today).isoformat(),
            locations=capacity_views(settings, used),
        )
