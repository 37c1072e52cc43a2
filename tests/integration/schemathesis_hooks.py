"""Schemathesis hooks for the API's property tests (loaded through SCHEMATHESIS_HOOKS).

One rule of the document is stated in words only, because JSON Schema cannot say it: the
line_ids of an order, and the order_ids of a batch, are unique. Generated bodies that break
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
    orders = body.get("orders")
    if _repeats(orders, "order_id"):
        return False
    for order in [body, *(orders if isinstance(orders, list) else [])]:
        if isinstance(order, dict) and _repeats(order.get("lines"), "line_id"):
            return False
    return True
