"""Baseline ASGI apps for the read benchmark, served like the API (benchmarks.serve).

- ``constant_app``: the same route shape answering a constant JSON document; the cost of
  the server, Litestar routing and response, and nothing else.
- ``redis_get_app``: the same route doing one Redis round trip per request (HGET of the
  stored projection document), no cache, no auth: what a read costs without the cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aredis
from litestar import Litestar, Response, get
from litestar.datastructures import State

from atp_service.config import load_settings
from atp_service.store import keys
from streams.changeset import projection_field

CONSTANT = (
    b'{"channel":"web","sku":"SKU-0000001","available_to_sell":112,"on_hand":131,'
    b'"reserved":19,"safety_stock":0,"atp":[{"date":"2026-12-03","quantity":162}],'
    b'"as_of":"2026-11-27T10:00:01.123Z"}'
)


@get("/healthz", sync_to_thread=False)
def healthz() -> Response[bytes]:
    return Response(content=b'{"status":"ok"}', media_type="application/json")


@get("/v1/availability/{channel:str}/{sku:str}", sync_to_thread=False)
def constant(channel: str, sku: str) -> Response[bytes]:
    return Response(content=CONSTANT, media_type="application/json")


@get("/v1/availability/{channel:str}/{sku:str}")
async def redis_get(channel: str, sku: str, state: State) -> Response[bytes]:
    document = await state.redis.hget(keys.SINGLE.sku_key(sku), projection_field(channel))
    return Response(content=document or CONSTANT, media_type="application/json")


def constant_app() -> Litestar:
    return Litestar(route_handlers=[healthz, constant], debug=False, openapi_config=None)


def redis_get_app() -> Litestar:
    settings = load_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = aredis.Redis.from_url(settings.redis.url)
        app.state.redis = client
        try:
            yield
        finally:
            await client.aclose()

    return Litestar(
        route_handlers=[healthz, redis_get], lifespan=[lifespan], debug=False, openapi_config=None
    )
