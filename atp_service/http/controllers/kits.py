"""PUT, GET and DELETE /v1/kits/{sku} (contract section 10)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, put
from litestar.exceptions import NotFoundException, ValidationException

from allocation.kits import KitComponent, KitRefused
from atp_service.allocator import Allocator, Busy, PublishFailed
from atp_service.http.auth import require
from atp_service.http.problems import failure, problem_responses
from atp_service.http.schemas import Component, KitBody, SkuParam


class Part(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


class Kit(msgspec.Struct, frozen=True):
    sku: str
    components: list[Part]

    @classmethod
    def of(cls, sku: str, components: Sequence[KitComponent | Component]) -> Kit:
        return cls(sku, [Part(c.sku, c.quantity) for c in components])


class KitController(Controller):
    path = "/v1/kits/{sku:str}"
    tags = ["kits"]

    @put(
        "/",
        guards=[require("admin")],
        responses=problem_responses(400, 401, 403, 503),
        summary="Define a kit, or change its components; its values follow within a second",
    )
    async def set_kit(
        self, request: Request[Any, Any, Any], sku: SkuParam, data: KitBody, allocator: Allocator
    ) -> Response[Kit]:
        components = tuple(KitComponent(c.sku, c.quantity) for c in data.components)
        try:
            await allocator.set_kit(sku, components)
        except KitRefused as exc:
            raise ValidationException(detail=f"components: {exc}") from None
        except (Busy, PublishFailed) as exc:
            return failure(request, exc)
        return Response(Kit.of(sku, data.components))

    @get(
        "/",
        guards=[require("availability:read")],
        responses=problem_responses(400, 401, 403, 404),
        summary="A kit's components",
    )
    async def get_kit(self, sku: SkuParam, allocator: Allocator) -> Kit:
        found = (await allocator.store.kit_records.of([sku])).get(sku)
        if found is None:
            raise NotFoundException(detail=f"no kit {sku!r}")
        return Kit.of(sku, found.components)

    @delete(
        "/",
        guards=[require("admin")],
        responses=problem_responses(400, 401, 403, 404, 503),
        summary="Delete a kit: the sku reads as one with no stock of its own",
        status_code=200,
    )
    async def delete_kit(
        self, request: Request[Any, Any, Any], sku: SkuParam, allocator: Allocator
    ) -> Response[Kit]:
        found = (await allocator.store.kit_records.of([sku])).get(sku)
        try:
            deleted = await allocator.set_kit(sku, None)
        except (Busy, PublishFailed) as exc:
            return failure(request, exc)
        if not deleted or found is None:
            raise NotFoundException(detail=f"no kit {sku!r}")
        return Response(Kit.of(sku, found.components))
