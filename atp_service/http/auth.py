"""Bearer-key authentication with scopes.

Keys are configured only as sha256 hex digests; a presented key is hashed and compared with
every configured digest in constant time, so timing reveals neither which key nor how much
of it matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from atp_service.config import ApiKeySettings


class KeyRing:
    def __init__(self, keys: Sequence[ApiKeySettings]) -> None:
        self._keys = [(bytes.fromhex(k.sha256), k.name, frozenset(k.scopes)) for k in keys]

    def scopes_for(self, authorization: str | None) -> tuple[str, frozenset[str]] | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: tuple[str, frozenset[str]] | None = None
        for expected, name, scopes in self._keys:
            if hmac.compare_digest(digest, expected):
                found = (name, scopes)
        return found


def require(scope: str):  # type: ignore[no-untyped-def]
    """A Litestar guard: 401 without a known key, 403 when the key lacks ``scope``."""

    # Async on purpose: Litestar runs a sync guard in a worker thread on every request.
    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
        ring: KeyRing = connection.app.state.keyring
        found = ring.scopes_for(connection.headers.get("authorization"))
        if found is None:
            raise NotAuthorizedException(
                detail="a valid bearer key is required", headers={"WWW-Authenticate": "Bearer"}
            )
        if scope not in found[1]:
            raise PermissionDeniedException(detail=f"this key lacks the scope {scope!r}")
        connection.scope["state"]["api_key"] = found[0]

    return guard
