"""The two hot routes answered in front of the framework, for their common case only.

A storefront's single-sku read and an order router's single allocation are most of the
traffic, and Litestar's per-request work (its ASGI entry, routing, middleware, dependency
and signature resolution, guards, response objects) is a large share of their CPU, which
under load is latency (docs/performance.md). ``app.serving_app`` puts these in front of the
Litestar application: each is answered from the ASGI scope directly when the request is
ordinary: a known key with the scope, a well-formed body, a known channel. Anything else (a bad key, a body the schema or
the order rules refuse, an odd path) goes through the full Litestar route, which owns every
error and edge case; a body already read is replayed to it unchanged.

Both answer exactly what their controllers answer: the same status, body and headers.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.types import Receive, ReceiveMessage, Scope, Send

from atp_service.http.controllers.allocations import check_order
from atp_service.http.problems import PROBLEM_JSON, logged_failure, problem_body
from atp_service.orders import OrderRequest
from streams.logs import correlation_id, new_correlation_id

READ_ROUTE: Final = "/v1/availability/{channel:str}/{sku:str}"
ALLOCATE_ROUTE: Final = "/v1/allocations"
_READ_PATH = re.compile(r"^/v1/availability/([A-Za-z0-9_.\-]{1,64})/([^/]{1,200})$")
_ALLOCATE_PATHS = frozenset({"/v1/allocations", "/v1/allocations/"})
_JSON = b"application/json"
_PROBLEM = PROBLEM_JSON.encode()
_decode_order = msgspec.json.Decoder(OrderRequest).decode
_encode = msgspec.json.Encoder().encode


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def request_correlation_id(scope: Scope) -> str:
    given = _header(scope, b"x-correlation-id")
    return given if given and len(given) <= 128 and given.isprintable() else new_correlation_id()


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    cid: str,
    media: bytes = _JSON,
    extra: dict[str, str] | None = None,
) -> None:
    headers = [
        (b"content-type", media),
        (b"content-length", str(len(body)).encode()),
        (b"x-correlation-id", cid.encode()),
    ]
    for name, value in (extra or {}).items():
        headers.append((name.lower().encode(), value.encode("latin-1")))
    start: Any = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    done: Any = {"type": "http.response.body", "body": body}
    await send(done)


def _has_scope(state: State, scope: Scope, wanted: str) -> bool:
    found = state.keyring.scopes_for(_header(scope, b"authorization"))
    return found is not None and wanted in found[1]


async def read(state: State, scope: Scope, send: Send) -> int | None:
    """``GET /v1/availability/{channel}/{sku}`` from the cache: the status answered, or None
    when the full route must answer."""
    match = _READ_PATH.match(scope["path"])
    if match is None or scope.get("method") != "GET" or scope.get("query_string"):
        return None
    if not _has_scope(state, scope, "availability:read"):
        return None
    channel, sku = match.group(1), match.group(2)
    if "%" in sku or not sku.isprintable():
        return None
    document = state.reader.cached(channel, sku)
    if document is None:
        return None
    await _answer(send, 200, document, request_correlation_id(scope))
    return 200


def _replay(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """A receive that hands out what was already read, then reads on."""
    pending = list(messages)

    async def replayed() -> ReceiveMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def allocate(
    state: State, scope: Scope, receive: Receive, send: Send
) -> tuple[int | None, Receive]:
    """``POST /v1/allocations``: the status answered, or None and the receive the full
    route must use (the body read so far, replayed)."""
    if (
        scope["path"] not in _ALLOCATE_PATHS
        or scope.get("method") != "POST"
        or scope.get("query_string")
        or not _has_scope(state, scope, "allocations:write")
    ):
        return None, receive
    media = _header(scope, b"content-type")
    if media is not None and media.split(";", 1)[0].strip().lower() != "application/json":
        return None, receive
    limit: int = state.settings.api.max_body_bytes
    messages: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, _replay(messages, receive)
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            return None, _replay(messages, receive)
        if not message.get("more_body", False):
            break
    try:
        order = _decode_order(b"".join(chunks))
        check_order(state.settings, order)
    except (msgspec.ValidationError, msgspec.DecodeError, HTTPException, RecursionError):
        # Litestar answers these with the problem document.
        return None, _replay(messages, receive)
    cid = request_correlation_id(scope)
    token = correlation_id.set(cid)
    try:
        ((result, created),) = await state.allocator.allocate([order])
    except Exception as exc:
        found = logged_failure(scope["path"], exc)
        body = problem_body(scope["path"], found.status, found.detail, kind=found.kind)
        await _answer(send, found.status, body, cid, _PROBLEM, found.headers)
        return found.status, receive
    finally:
        correlation_id.reset(token)
    status = 201 if created else 200
    await _answer(send, status, _encode(result), cid)
    return status, receive
