"""Schemathesis hooks for the API's property tests (loaded through SCHEMATHESIS_HOOKS).

Some rules of the document are stated in words only, because JSON Schema cannot say them:
the line_ids of an order, the order_ids of a batch and the components of a kit are unique. Generated bodies that break
it are not the valid requests the positive checks take them for, so they are left out.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _repeats(items: Any, field: str) -> bool:
    if not isinstance(items, list):
        return False
    ids = [item.get(field) for item in items if isinstance(item, dict)]
    return len(ids) != len(set(map(repr, ids)))


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    if not isinstance(body, dict):
        return True
    if _repeats(body.get("components"), "sku"):  # a kit lists a component once
        return False
    orders = body.get("orders")
    if _repeats(orders, "order_id"):
        return False
    for order in [body, *(orders if isinstance(orders, list) else [])]:
        if isinstance(order, dict) and _repeats(order.get("lines"), "line_id"):
            return False
    return True


# The kit rules that involve other kits (no component is a kit, no kit is a component of
# another, a kit is not its own component), stated in words only. The phases apply hooks at
# different levels (the coverage phase whole cases, the fuzzing phase each part), so both:
# whole PUTs that would break a rule are left out, and in parts a kit's sku in a path ends
# with "~" while a component's never does nor names a kit seen before.
KIT_MARK = "~"
_kits: set[str] = set()
_components: set[str] = set()


def _is_kits(context: Any) -> bool:
    operation = getattr(context, "operation", None)
    return operation is not None and str(operation.path).startswith("/v1/kits/")


def _parts(body: Any) -> set[str]:
    components = body.get("components") if isinstance(body, dict) else None
    if not isinstance(components, list):
        return set()
    return {c["sku"] for c in components if isinstance(c, dict) and isinstance(c.get("sku"), str)}


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    sku = (case.path_parameters or {}).get("sku")
    if case.method.upper() != "PUT" or not isinstance(sku, str) or not _is_kits(context):
        return True
    parts = _parts(case.body)
    if sku in parts or sku in _components or parts & _kits:
        return False
    _kits.add(sku)
    _components.update(parts)
    return True


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: Any) -> Any:
    sku = path_parameters.get("sku") if isinstance(path_parameters, dict) else None
    if not _is_kits(context) or not isinstance(sku, str):
        return path_parameters
    sku = sku[:190] + KIT_MARK
    while sku in _components:
        sku = sku[:190] + KIT_MARK * 2
    _kits.add(sku)
    return {**path_parameters, "sku": sku}


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if not _parts(body):
        return body

    def part(sku: str) -> str:
        while sku.endswith(KIT_MARK) or sku in _kits:
            sku = sku[:190] + "-c"
        _components.add(sku)
        return sku

    return {
        **body,
        "components": [
            {**c, "sku": part(c["sku"])}
            if isinstance(c, dict) and isinstance(c.get("sku"), str)
            else c
            for c in body["components"]
        ],
    }
