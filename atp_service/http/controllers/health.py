"""Liveness, readiness and metrics: no key needed."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from atp_service.http.problems import problem, problem_responses
from atp_service.http.redis_access import RedisAccess
from atp_service.http.schemas import Health


@get("/healthz", summary="200 while the process lives", tags=["operations"])
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    responses=problem_responses(503),
    summary="200 when Redis answers and holds an initialized projection, else 503",
    tags=["operations"],
)
async def readyz(request: Request[Any, Any, Any], redis: RedisAccess) -> Response[Any]:
    layout = redis.layout
    try:
        pipe = redis.client.pipeline(transaction=False)
        for shard in range(layout.shards):
            pipe.exists(layout.marker_key(shard))
        initialized = all(await pipe.execute())
    except Exception:
        return problem(
            request, 503, "redis does not answer", headers={"Retry-After": "1"}, kind="not-ready"
        )
    if not initialized:
        return problem(
            request, 503, "redis holds no initialized projection (lost its data?); "
            "a consumer initializes an empty one, or run `atp rebuild`",
            headers={"Retry-After": "5"}, kind="projection-not-ready",
        )  # fmt: skip
    return Response(content=Health(status="ready"))


@get("/metrics", summary="Prometheus metrics", tags=["operations"], media_type=CONTENT_TYPE_LATEST)
async def metrics() -> Response[bytes]:
    return Response(content=generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
