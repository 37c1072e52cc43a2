"""What the OpenAPI document says beyond what Litestar derives from the types.

Litestar writes the document from the handlers' types, but some rules the server enforces
do not come through, and are added here once the app is built, from msgspec's own schema
of the same types: request bodies refuse unknown fields (``additionalProperties: false``),
and the items of a list keep their lengths and patterns. And the order an allocation
returns can be read and released by its ``order_id`` (OpenAPI links, which client
generators and stateful testers follow). Every operation outside the keyed router (the
operations routes, which need no key by contract) says so with an empty ``security``,
whatever a gateway adds at the top of the document.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar.openapi.spec import Link, OpenAPI, OpenAPIResponse, Schema

from atp_service.http.schemas import Component, KitBody, SafetyStock, SkuQuery
from atp_service.orders import BatchRequest, OrderLine, OrderRequest

REQUEST_BODIES: Final[tuple[type[msgspec.Struct], ...]] = (
    SkuQuery,
    OrderLine,
    OrderRequest,
    BatchRequest,
    SafetyStock,
    KitBody,
    Component,
)
ORDER_ROUTES: Final = {
    "ReadOrder": "V1AllocationsOrderIdRead",
    "ReleaseOrder": "V1AllocationsOrderIdRemove",
}


def complete(document: OpenAPI) -> OpenAPI:
    schemas = document.components.schemas if document.components else {}
    _, enforced = msgspec.json.schema_components(REQUEST_BODIES)
    for body in REQUEST_BODIES:
        schema = schemas.get(body.__name__)
        if isinstance(schema, Schema):
            _enforce(schema, enforced[body.__name__])
    created = document.paths["/v1/allocations"].post if document.paths else None
    if created is not None and created.responses:
        links = {
            name: Link(operation_id=operation, parameters={"order_id": "$response.body#/order_id"})
            for name, operation in ORDER_ROUTES.items()
        }
        for status in ("200", "201"):
            response = created.responses.get(status)
            if isinstance(response, OpenAPIResponse):
                response.links = dict(links)
    for item in (document.paths or {}).values():
        for operation in (item.get, item.put, item.post, item.delete, item.patch):
            if operation is not None and operation.security is None:
                operation.security = []
    return document


def _enforce(schema: Schema, enforced: dict[str, Any]) -> None:
    if enforced.get("additionalProperties") is False:
        schema.additional_properties = False
    for name, field in enforced.get("properties", {}).items():
        items = field.get("items")
        documented = (schema.properties or {}).get(name)
        if not isinstance(items, dict) or "$ref" in items or not isinstance(documented, Schema):
            continue
        if isinstance(documented.items, Schema):
            documented.items.min_length = items.get("minLength")
            documented.items.max_length = items.get("maxLength")
            documented.items.pattern = items.get("pattern")
