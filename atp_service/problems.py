"""Every error leaves as RFC 9457 application/problem+json, mapped here once."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import redis
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from atp_service.store import ProjectionMissing

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


def problem(
    request: Request[Any, Any, Any],
    status: int,
    detail: str | None,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    kind: str | None = None,
) -> Response[Any]:
    body = Problem(
        type=f"https://atp.dev/problems/{kind or status}",
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


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


def _redis_down(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.warning("redis unavailable during %s: %s", request.url.path, exc)
    return problem(
        request,
        503,
        "the availability store is unavailable; retry shortly",
        headers={"Retry-After": "1"},
        kind="store-unavailable",
    )


def _not_ready(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return problem(
        request,
        503,
        "the projection is not initialized (Redis lost its data?); run `atp rebuild`",
        headers={"Retry-After": "5"},
        kind="projection-not-ready",
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s", request.url.path)
    return problem(request, 500, "internal error", kind="internal")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: _http,
    redis.RedisError: _redis_down,
    ProjectionMissing: _not_ready,
    ConnectionError: _redis_down,
    Exception: _internal,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "MediaType", "problem"]
