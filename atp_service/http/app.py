"""The Litestar application: controllers, dependencies, error mapping, OpenAPI."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aredis
from litestar import Litestar, Request, Response, Router, route
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import Histogram

from atp_service.allocator import Allocator
from atp_service.config import Settings, load_settings
from atp_service.http import fast
from atp_service.http.auth import KeyRing
from atp_service.http.controllers import ui
from atp_service.http.controllers.allocations import AllocationController
from atp_service.http.controllers.availability import AvailabilityController
from atp_service.http.controllers.channels import ChannelController
from atp_service.http.controllers.health import healthz, metrics, readyz
from atp_service.http.controllers.kits import KitController
from atp_service.http.controllers.locations import LocationController
from atp_service.http.controllers.safety_stock import SafetyStockController
from atp_service.http.controllers.ui import UiController
from atp_service.http.document import complete
from atp_service.http.problems import EXCEPTION_HANDLERS
from atp_service.http.reader import AvailabilityReader
from atp_service.http.redis_access import RedisAccess
from atp_service.model import projector_for
from atp_service.sharded_allocator import ShardedAllocator
from atp_service.store import keys
from atp_service.store.async_store import AsyncRedisStore
from streams.kafka import AsyncPublisher, api_producer_config
from streams.logs import correlation_id
from streams.state import US_PER_DAY

HTTP_DURATION = Histogram(
    "atp_http_request_duration_seconds",
    "HTTP request duration by route and status",
    ["route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


def redis_client(settings: Settings) -> aredis.Redis:
    # Short timeouts: with Redis down, a read answers 503 quickly instead of hanging.
    if settings.redis.cluster:
        cluster: aredis.Redis = aredis.RedisCluster.from_url(  # type: ignore[assignment]
            settings.redis.url, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        return cluster
    return aredis.Redis.from_url(
        settings.redis.url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=5
    )


def _metrics_middleware(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        cid = fast.request_correlation_id(scope)
        token = correlation_id.set(cid)

        async def record(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-correlation-id", cid.encode())]
            await send(message)

        try:
            await app(scope, receive, record)
        finally:
            handler = scope.get("route_handler")
            route = _route_of(handler)
            HTTP_DURATION.labels(route, str(status)).observe(time.perf_counter() - started)
            correlation_id.reset(token)

    return wrapped


def _route_of(handler: Any) -> str:
    if handler is None:
        return "unmatched"
    path = next(iter(handler.paths))
    owner = getattr(handler, "owner", None)
    prefix = getattr(owner, "path", "") if owner is not None else ""
    if isinstance(prefix, str) and prefix not in ("", "/"):
        path = prefix.rstrip("/") + ("" if path == "/" else path)
    return str(path)


def _provide_reader(state: State) -> AvailabilityReader:
    reader: AvailabilityReader = state.reader
    return reader


def _provide_allocator(state: State) -> Allocator:
    allocator: Allocator = state.allocator
    return allocator


def _provide_redis(state: State) -> RedisAccess:
    return RedisAccess(state.redis, state.layout)


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = redis_client(settings)
        layout = keys.Layout(settings.redis.shard_count)
        reader = AvailabilityReader(
            client, app.state.projector, settings.api.cache_staleness_ms / 1000, layout=layout
        )
        publisher = AsyncPublisher(api_producer_config(settings.kafka.bootstrap))
        # Connected now, in the background: the idempotent producer's first acknowledgement
        # waits about 0.5 s for its producer id, which would otherwise fall on the first
        # allocation of every worker. A broker that is down only delays it (no blocking).
        publisher.start()
        app.state.redis = client
        app.state.layout = layout
        app.state.reader = reader
        # With several shards, or on any cluster, an order's record is a key of no shard
        # that no script can write with its lines: it is written in steps (docs/scaling.md).
        sharded = layout.shards > 1 or settings.redis.cluster
        kind = ShardedAllocator if sharded else Allocator
        app.state.allocator = kind(
            AsyncRedisStore(
                client,
                settings.kafka.group_id,
                int(settings.consumer.dedupe_window_days * US_PER_DAY // 1000),
                layout,
                settings.redis.cluster,
            ),
            app.state.projector,
            publisher.send_all,
            settings.topics.reservations,
            overrides_topic=settings.topics.overrides,
        )
        await reader.start()
        sweep = asyncio.create_task(app.state.allocator.keep_publishing())
        # What start-up allocated lives as long as the worker: out of the collector's way,
        # so a full collection does not walk it (a pause of tens of ms otherwise).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweep
            # In flight allocations first: they need Redis and the publisher to finish.
            await app.state.allocator.drain()
            await reader.stop()
            await client.aclose()
            publisher.close()

    def provide_settings() -> Settings:
        return settings

    # Every route but the public operations ones (contract: no key) needs the bearer key, and
    # the document says so per route: security is only added up the layers, never removed.
    keyed = Router(
        "/",
        route_handlers=[
            # Before the controllers: Litestar's own OPTIONS answer on a path with handlers
            # in several methods lists only the first method's (it is made with the first).
            allow_header_for(f"{AllocationController.path}/{{order_id:str}}"),
            allow_header_for(SafetyStockController.path),
            allow_header_for(KitController.path),
            AvailabilityController,
            ChannelController,
            AllocationController,
            SafetyStockController,
            KitController,
            LocationController,
            UiController,
        ],
        security=[{"bearer": []}],
    )
    app = Litestar(
        route_handlers=[keyed, ui.STATIC, healthz, readyz, metrics],
        dependencies={
            "settings": Provide(provide_settings, sync_to_thread=False),
            "reader": Provide(_provide_reader, sync_to_thread=False),
            "redis": Provide(_provide_redis, sync_to_thread=False),
            "allocator": Provide(_provide_allocator, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        middleware=[_metrics_middleware],
        request_max_body_size=settings.api.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="atp: availability to promise",
            version="1.0.0",
            path="/schema",
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="API key")
                }
            ),
        ),
        debug=False,
    )
    complete(app.openapi_schema)
    app.state.settings = settings
    app.state.keyring = KeyRing(settings.api_keys)
    app.state.projector = projector_for(settings)
    return app


def allow_header_for(path: str) -> HTTPRouteHandler:
    """OPTIONS for ``path``: 204 with every method its route answers."""

    @route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False, status_code=204)
    async def allowed(request: Request[Any, Any, Any]) -> Response[None]:
        template = request.scope["path_template"]
        methods = next(r.methods for r in request.app.routes if r.path_format == template)
        return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})

    return allowed


def serving_app(app: Litestar) -> ASGIApp:
    """The application as served: the hot routes' fast paths (atp_service/fast.py) in front
    of Litestar, which answers everything they leave, lifespan included."""
    state = app.state

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # type: ignore[comparison-overlap]
            started = time.perf_counter()
            route = fast.READ_ROUTE
            answered = await fast.read(state, scope, send)
            if answered is None:
                route = fast.ALLOCATE_ROUTE
                answered, receive = await fast.allocate(state, scope, receive, send)
            if answered is not None:
                HTTP_DURATION.labels(route, str(answered)).observe(time.perf_counter() - started)
                return
        await app(scope, receive, send)

    return serve


def app_from_environment() -> ASGIApp:
    """Factory for the ASGI server: settings from ATP_CONFIG and the ATP_* overrides."""
    return serving_app(create_app(load_settings()))
