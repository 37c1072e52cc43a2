"""An order's record and the line records re-plans made of its backordered lines, as
both stores read them for ``orders.current``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from atp_service.orders import (
    StoredOrder,
    backordered_lines,
    decode_stored,
)
from streams.backorders import line_field


def stored_order(raw: bytes | None) -> StoredOrder | None:
    """An order record, or None: absent, or still being written (a pending record of
    atp_service/sharded_allocator.py, which is not JSON)."""
    return decode_stored(raw) if raw and raw[:1] == b"{" else None


def line_fields(orders: Iterable[tuple[str, StoredOrder]]) -> dict[str, list[str]]:
    """Per sku, the fields of its hash of lines that may hold what re-plans made of these
    orders' lines: one HMGET per sku (a released order is never planned again)."""
    out: dict[str, list[str]] = {}
    for order_id, order in orders:
        if order.result.status != "released":
            for line in backordered_lines(order):
                out.setdefault(line.sku, []).append(line_field(order_id, line.line_id))
    return out


def line_records(
    fields: Mapping[str, Sequence[str]], replies: Sequence[Sequence[bytes | None]]
) -> dict[str, bytes]:
    """The line records found (field -> record), from the HMGET replies of ``fields``."""
    return {
        name: record
        for names, found in zip(fields.values(), replies, strict=True)
        for name, record in zip(names, found, strict=True)
        if record is not None
    }


def lines_of(order_id: str, order: StoredOrder, records: Mapping[str, bytes]) -> dict[str, bytes]:
    """An order's line records (line_id -> record), for ``current``."""
    return {
        line.line_id: records[name]
        for line in backordered_lines(order)
        if (name := line_field(order_id, line.line_id)) in records
    }
