"""Telling a sku's hash from a shard's other keys by name alone: `atp rebuild`, `atp verify`,
`atp import --full` and the control tower scan for sku hashes with ``keys.SKU_PATTERN`` and
keep what ``keys.sku_of`` names. A sku may hold any printable character but '/'."""

from __future__ import annotations

import pytest

from atp_service.store import keys

LAYOUT = keys.Layout(16)
ODD_SKUS = ["PLAIN-1", "x}:s:y", "}:s:", "a:s:b", "{braces}", "kh:k", "lines:z", "ü-ß"]


@pytest.mark.parametrize("sku", ODD_SKUS)
def test_a_sku_hash_names_its_sku_and_no_other_key_of_the_shard_names_one(sku: str) -> None:
    assert keys.sku_of(LAYOUT.sku_key(sku)) == sku
    assert keys.sku_of(LAYOUT.sku_key(sku).encode()) == sku
    others = [
        LAYOUT.lines_key(sku),
        LAYOUT.kits_of_key(sku),
        LAYOUT.marks_key(sku, 7),
        LAYOUT.due_key(LAYOUT.shard(sku)),
        LAYOUT.kits_due_key(LAYOUT.shard(sku)),
        keys.KITS,
        keys.KITS_VERSION,
        LAYOUT.capacity_claims_key(20_000),
    ]
    assert [keys.sku_of(name) for name in others] == [None] * len(others)
