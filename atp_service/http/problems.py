"""Every error leaves as RFC 9457 application/problem+json, mapped here once."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import redis
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from atp_service.allocator import Busy, OrderConflict, PublishFailed
from atp_service.store.keys import SpansShards
from streams.store import ProjectionMissing

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


DESCRIPTIONS = {
    400: "Malformed input; `detail` names the field",
    401: "No key or an unknown key",
    403: "The key lacks the scope",
    404: "Unknown channel, order or route",
    409: "The order_id exists with a different body",
    413: "The request body is too large",
    503: "Redis or the broker is unavailable; retry after Retry-After seconds",
}


def problem_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem+json answers an operation can give."""
    return {
        code: ResponseSpec(
            data_container=Problem, media_type=PROBLEM_JSON, description=DESCRIPTIONS[code]
        )
        for code in codes
    }


def problem_body(
    path: str,
    status: int,
    detail: str | None,
    *,
    errors: list[dict[str, Any]] | None = None,
    kind: str | None = None,
) -> bytes:
    return msgspec.json.encode(
        Problem(
            type=f"https://atp.dev/problems/{kind or status}",
            title=TITLES.get(status, "Error"),
            status=status,
            detail=detail,
            instance=path,
            errors=errors,
        )
    )


def problem(
    request: Request[Any, Any, Any],
    status: int,
    detail: str | None,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    kind: str | None = None,
) -> Response[Any]:
    return Response(
        content=problem_body(request.url.path, status, detail, errors=errors, kind=kind),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


class Failure(msgspec.Struct, frozen=True):
    """What an exception from the store or the service's own refusals answers."""

    status: int
    detail: str
    kind: str
    headers: dict[str, str] | None = None


def failure_of(exc: Exception) -> Failure:
    """Every non-HTTP exception's answer, in one place: the Litestar handlers below and the
    fast allocation path (atp_service/fast.py) both answer from it."""
    if isinstance(exc, RecursionError):
        # Raised by the body's JSON decoder (it follows nesting down the C stack); nothing
        # else a route runs recurses.
        return Failure(400, "the request body is not valid JSON: nested too deeply", "invalid-body")
    if isinstance(exc, OrderConflict):
        return Failure(
            409, f"order {exc.order_id!r} exists with a different body", "order-conflict"
        )
    if isinstance(exc, PublishFailed):
        return Failure(503, str(exc), "publish-failed", {"Retry-After": "1"})
    if isinstance(exc, Busy):
        return Failure(503, str(exc), "busy", {"Retry-After": "1"})
    if isinstance(exc, ProjectionMissing):
        return Failure(
            503,
            "the projection is not initialized (Redis lost its data?); run `atp rebuild`",
            "projection-not-ready",
            {"Retry-After": "5"},
        )
    if isinstance(exc, SpansShards):
        return Failure(
            503,
            f"a write over several shards that must be one script: {exc} (docs/scaling.md)",
            "spans-shards",
        )
    # RedisClusterException is no RedisError: redis-py raises it when no node serves every
    # slot (a cluster that is not ok) or none answers while it learns the slot map.
    if isinstance(exc, (redis.RedisError, redis.RedisClusterException, ConnectionError)):
        return Failure(
            503,
            "the availability store is unavailable; retry shortly",
            "store-unavailable",
            {"Retry-After": "1"},
        )
    return Failure(500, "internal error", "internal")


def logged_failure(path: str, exc: Exception) -> Failure:
    """``failure_of``, with the log line an outage or a bug deserves."""
    found = failure_of(exc)
    if found.kind == "store-unavailable":
        log.warning("redis unavailable during %s: %s", path, exc)
    elif found.kind == "invalid-body":
        log.info("refused a request body on %s: %r", path, exc)
    elif found.kind == "internal":
        log.exception("unhandled error on %s", path, exc_info=exc)
    return found


def failure(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    found = logged_failure(request.url.path, exc)
    return problem(request, found.status, found.detail, headers=found.headers, kind=found.kind)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    errors = None
    detail = exc.detail
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else None
        errors = [e if isinstance(e, dict) else {"message": str(e)} for e in extra or []]
        if errors:
            where = ", ".join(str(e.get("key") or e.get("source") or "") for e in errors if e)
            first = errors[0].get("message", "")
            detail = f"{exc.detail}: {first}" + (f" (at {where})" if where.strip(", ") else "")
    return problem(request, exc.status_code, detail, errors=errors, headers=exc.headers)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: _http,
    redis.RedisError: failure,
    redis.RedisClusterException: failure,
    ProjectionMissing: failure,
    ConnectionError: failure,
    Exception: failure,
}

__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "Failure",
    "MediaType",
    "failure",
    "failure_of",
    "logged_failure",
    "problem",
    "problem_body",
]
