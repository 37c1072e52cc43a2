"""The control tower: `GET /ui` (a self-contained page) and the JSON it reads,
`GET /v1/ops/summary` and `GET /v1/ops/sku/{sku}`.

All three accept a key with the ``admin`` scope or the ``availability:read`` scope.

The key on the page: a browser cannot send an ``Authorization`` header when an operator
types a URL, so `/ui` also accepts the key as ``?key=...``; the page's script then reads it
from its own address and sends it as a bearer header on its fetch() calls (the JSON endpoints
accept the header only). The tradeoff: a key in a URL lands in the browser's history and in
the access logs of any proxy in front of the API (this service does not log access). So the
page is answered with ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``, loads
nothing from elsewhere (a strict Content-Security-Policy: its script and style are static
files of its own origin, nothing inline), and should be opened with a read-only key. Behind
an authenticating proxy that injects the header, open `/ui` without ``?key=``: the page
then sends no header of its own.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Final

from litestar import Controller, MediaType, Request, Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.static_files import create_static_files_router

from atp_service.config import Settings
from atp_service.http.auth import KeyRing
from atp_service.http.problems import problem_responses
from atp_service.http.redis_access import RedisAccess
from atp_service.http.schemas import SkuParam
from atp_service.ops.tower import Tower
from atp_service.ops.views import SkuView, Summary

OPS_SCOPES: Final = ("admin", "availability:read")


def require_any(*scopes: str, query_key: bool = False):  # type: ignore[no-untyped-def]
    """A guard like :func:`atp_service.http.auth.require` that accepts any one of ``scopes``;
    with ``query_key`` a ``?key=`` query parameter stands in for a missing header."""
    wanted = frozenset(scopes)
    named = " or ".join(repr(s) for s in scopes)

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
        ring: KeyRing = connection.app.state.keyring
        authorization = connection.headers.get("authorization")
        if not authorization and query_key:
            key = connection.query_params.get("key")
            authorization = f"Bearer {key}" if key else None
        found = ring.scopes_for(authorization)
        if found is None:
            raise NotAuthorizedException(
                detail="a valid bearer key is required", headers={"WWW-Authenticate": "Bearer"}
            )
        if not wanted & found[1]:
            raise PermissionDeniedException(detail=f"this key lacks the scope {named}")
        connection.scope["state"]["api_key"] = found[0]

    return guard


def _provide_tower(state: State, settings: Settings, redis: RedisAccess) -> Tower:
    # One per process, made on first use: its cache is shared by every request.
    tower: Tower | None = state.get("tower")
    if tower is None or tower.client is not redis.client:
        tower = Tower(redis.client, settings)
        state.tower = tower
    return tower


class UiController(Controller):
    path = "/"
    tags = ["operations"]
    dependencies = {"tower": Provide(_provide_tower, sync_to_thread=False)}

    @get(
        "/ui",
        guards=[require_any(*OPS_SCOPES, query_key=True)],
        include_in_schema=False,
        media_type=MediaType.HTML,
    )
    async def page(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return Response(
            content=PAGE,
            media_type=MediaType.HTML,
            headers={
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY",
                "Content-Security-Policy": (
                    "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
                    "style-src 'self'; script-src 'self'; "
                    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
                ),
            },
        )

    @get(
        "/v1/ops/summary",
        guards=[require_any(*OPS_SCOPES)],
        responses=problem_responses(401, 403, 503),
        summary="Control tower figures: skus at zero / under safety stock, lag, latency, "
        "dead letters, oldest open reservations (cached a few seconds)",
    )
    async def summary(self, tower: Tower) -> Summary:
        return await tower.summary()

    @get(
        "/v1/ops/sku/{sku:str}",
        guards=[require_any(*OPS_SCOPES)],
        responses=problem_responses(400, 401, 403, 503),
        summary="One sku for operators: stock per location and status, reservations, "
        "inbound with ETAs, available_to_sell per channel",
    )
    async def sku(self, sku: SkuParam, tower: Tower) -> SkuView:
        return await tower.sku(sku)


# The page, its style and its script are files of the package (atp_service/http/static/):
# the page is served by the guarded route above, the other two by STATIC (no secrets in them).
STATIC_DIR: Final = resources.files("atp_service.http").joinpath("static")
PAGE: Final = STATIC_DIR.joinpath("ui.html").read_bytes()
STATIC: Final = create_static_files_router(
    path="/ui/static", directories=[str(STATIC_DIR)], include_in_schema=False
)
