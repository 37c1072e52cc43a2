"""Liveness, readiness and metrics: no key needed."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import redis.asyncio as aredis
from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from atp_service.http.problems import problem, problem_responses
from atp_service.http.redis_access import RedisAccess
from atp_service.http.schemas import Health
from atp_service.store import cluster_state

# Within the readiness probe's own timeout (the Helm chart's is 2 s): an answer that comes
# later is no answer to the probe. redis-py's cluster client retries a cluster that is down
# for seconds, so readiness asks the nodes themselves first (cluster_state.trouble).
READY_TIMEOUT_S: Final = 1.5


@get("/healthz", summary="200 while the process lives", tags=["operations"])
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    responses=problem_responses(503),
    summary="200 when Redis answers (on a cluster: every primary says ok) and holds an "
    "initialized projection, else 503",
    tags=["operations"],
)
async def readyz(request: Request[Any, Any, Any], redis: RedisAccess) -> Response[Any]:
    layout = redis.layout
    trouble = None
    initialized = False
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            if isinstance(redis.client, aredis.RedisCluster):
                trouble = await cluster_state.trouble(redis.client)
            if trouble is None:
                pipe = redis.client.pipeline(transaction=False)
                for shard in range(layout.shards):
                    pipe.exists(layout.marker_key(shard))
                initialized = all(await pipe.execute())
    except TimeoutError:
        return problem(
            request, 503, f"redis did not answer within {READY_TIMEOUT_S:g} s",
            headers={"Retry-After": "1"}, kind="not-ready",
        )  # fmt: skip
    except Exception:
        return problem(
            request, 503, "redis does not answer", headers={"Retry-After": "1"}, kind="not-ready"
        )
    if trouble is not None:
        return problem(
            request, 503, f"the Redis Cluster is not ok: {trouble}",
            headers={"Retry-After": "1"}, kind="cluster-not-ok",
        )  # fmt: skip
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
