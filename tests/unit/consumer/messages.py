"""Events the consumer's unit tests feed it: a receipt into DC-EAST, as a body or as the
message value a producer sends."""

from __future__ import annotations

import json
from typing import Any


def receipt(n: int, sku: str = "SKU-1", quantity: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "type": "bin_movement", "event_id": f"e-{n}", "occurred_at": "2026-11-27T08:00:00Z",
        "sku": sku, "location": "DC-EAST", "quantity": quantity, "to_bin": "A1",
        "to_status": "available", **extra,
    }  # fmt: skip


def receipt_value(n: int, quantity: int = 1) -> bytes:
    return json.dumps(receipt(n, quantity=quantity)).encode()
