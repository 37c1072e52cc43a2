"""POST /v1/allocations (+ /batch), GET and DELETE /v1/allocations/{order_id}."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from atp_service.allocator import Allocator, Busy, OrderConflict, PublishFailed
from atp_service.config import Settings
from atp_service.http.auth import require
from atp_service.http.problems import failure, problem_responses
from atp_service.orders import (
    ORDER_ID_PATTERN,
    BatchRequest,
    BatchResult,
    OrderRequest,
    OrderResult,
)


def check_order(settings: Settings, order: OrderRequest, where: str = "") -> None:
    """Input rules beyond the schema; each names the offending field."""
    if settings.channel(order.channel) is None:
        raise NotFoundException(detail=f"unknown channel {order.channel!r}")
    limits = settings.api
    if not order.lines:
        raise ValidationException(detail=f"{where}lines: an order needs at least one line")
    if len(order.lines) > limits.max_lines_per_order:
        raise ValidationException(
            detail=f"{where}lines: at most {limits.max_lines_per_order} lines per order"
        )
    seen: set[str] = set()
    for i, line in enumerate(order.lines):
        if line.quantity < 1 or line.quantity > limits.max_line_quantity:
            raise ValidationException(
                detail=f"{where}lines[{i}].quantity: must be 1 to {limits.max_line_quantity}"
            )
        if line.line_id in seen:
            raise ValidationException(detail=f"{where}lines[{i}].line_id: {line.line_id!r} repeats")
        seen.add(line.line_id)


OrderIdParam = Annotated[str, Parameter(pattern=ORDER_ID_PATTERN, min_length=1, max_length=150)]


class AllocationController(Controller):
    path = "/v1/allocations"
    guards = [require("allocations:write")]
    tags = ["allocations"]

    @post(
        "/",
        responses={
            200: ResponseSpec(OrderResult, description="A repeat of a stored order: its result"),
            **problem_responses(400, 401, 403, 404, 409, 413, 503),
        },
        summary="Allocate one order (idempotent by order_id)",
        status_code=201,
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: OrderRequest,
        settings: Settings,
        allocator: Allocator,
    ) -> Response[OrderResult]:
        # The common case never gets here: atp_service/fast.py answers it in front of
        # Litestar with the same rules (check_order) and the same answers.
        check_order(settings, data)
        try:
            ((result, created),) = await allocator.allocate([data])
        except (OrderConflict, PublishFailed, Busy) as exc:
            return failure(request, exc)
        return Response(result, status_code=201 if created else 200)

    @post(
        "/batch",
        responses=problem_responses(400, 401, 403, 404, 409, 413, 503),
        summary="Allocate a wave of orders together",
        status_code=200,
    )
    async def batch(
        self,
        request: Request[Any, Any, Any],
        data: BatchRequest,
        settings: Settings,
        allocator: Allocator,
    ) -> Response[BatchResult]:
        if not data.orders:
            raise ValidationException(detail="orders: a batch needs at least one order")
        if len(data.orders) > settings.api.max_batch_orders:
            raise ValidationException(
                detail=f"orders: at most {settings.api.max_batch_orders} orders"
            )
        ids: set[str] = set()
        for i, order in enumerate(data.orders):
            check_order(settings, order, where=f"orders[{i}].")
            if order.order_id in ids:
                raise ValidationException(
                    detail=f"orders[{i}].order_id: {order.order_id!r} repeats"
                )
            ids.add(order.order_id)
        try:
            results = await allocator.allocate(data.orders)
        except (OrderConflict, PublishFailed, Busy) as exc:
            return failure(request, exc)
        return Response(BatchResult([r for r, _ in results]))

    @get(
        "/{order_id:str}",
        responses=problem_responses(400, 401, 403, 404, 503),
        summary="An order as planned now (its backorders follow supply)",
    )
    async def read(self, order_id: OrderIdParam, allocator: Allocator) -> OrderResult:
        (stored,) = await allocator.stored([order_id])
        if stored is None:
            raise NotFoundException(detail=f"unknown order {order_id!r}")
        return stored.result

    @delete(
        "/{order_id:str}",
        responses=problem_responses(400, 401, 403, 404, 503),
        summary="Release every open reservation of an order",
        status_code=200,
    )
    async def remove(
        self, request: Request[Any, Any, Any], order_id: OrderIdParam, allocator: Allocator
    ) -> Response[OrderResult]:
        try:
            result = await allocator.release(order_id)
        except (PublishFailed, Busy) as exc:
            return failure(request, exc)
        if result is None:
            raise NotFoundException(detail=f"unknown order {order_id!r}")
        return Response(result)
