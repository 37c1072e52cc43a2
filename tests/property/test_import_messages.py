"""`atp import`'s messages (contract section 8) against a plain-Python reference, for any
valid stock export: one stock_snapshot per (sku, location) in byte order, its bins in
(bin, status) byte order, quantities as given, texts unchanged, and the event id the
sha256 rule names, whatever the file's row order and whether it is CSV or Parquet. The
importer sorts by ranks of distinct texts and writes the JSON with Arrow's kernels; the
reference groups and sorts rows in Python and decodes what the consumer decodes."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from atp_service.ops.importer import plan, snapshots
from streams.events import decode

AS_OF = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
Row = tuple[str, str, str, str, str]

# Printable text without control characters, leading or trailing spaces kept apart from
# emptiness: quotes, backslashes, commas, non-ASCII (whose byte order differs from ASCII's
# case order), and a few short names so that rows share skus, locations, bins and statuses.
_piece = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f"),
    min_size=1,
    max_size=6,
).filter(lambda t: t.strip() != "")
_name = st.one_of(st.sampled_from(["A", "a", "B", "é", "Z", 'q"', "b\\s", "x,y"]), _piece)


@st.composite
def exports(draw: st.DrawFn) -> list[Row]:
    keys = draw(
        st.lists(st.tuples(_name, _name, _name, _name), min_size=1, max_size=40, unique=True)
    )
    quantities = draw(st.lists(st.integers(0, 10**9), min_size=len(keys), max_size=len(keys)))
    return [(*k, str(q)) for k, q in zip(keys, quantities, strict=True)]


def reference(rows: list[Row], digest: str) -> list[dict[str, Any]]:
    by_pair: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        by_pair.setdefault((row[0], row[1]), []).append(row)
    out = []
    for sku, location in sorted(by_pair, key=lambda p: (p[0].encode(), p[1].encode())):
        listed = sorted(by_pair[sku, location], key=lambda r: (r[2].encode(), r[3].encode()))
        seed = f"{digest}\x1f{AS_OF.isoformat()}\x1f{sku}\x1f{location}".encode()
        out.append(
            {
                "event_id": "import-" + hashlib.sha256(seed).hexdigest()[:32],
                "sku": sku,
                "location": location,
                "bins": [[r[2], r[3], int(r[4])] for r in listed],
            }
        )
    return out


def imported(path: Path) -> list[dict[str, Any]]:
    """What the import would produce for ``path``, as the consumer decodes it."""
    out = []
    for keys, values in snapshots(plan(path), AS_OF):
        for key, value in zip(keys, values, strict=True):
            event = decode(value.encode(), frozenset())
            assert key == event.sku and event.occurred_at == AS_OF
            json.loads(value)  # plain JSON too, for clients other than ours
            out.append(
                {
                    "event_id": event.event_id,
                    "sku": event.sku,
                    "location": event.location,
                    "bins": [[b.bin, b.status, b.quantity] for b in event.bins],
                }
            )
    return out


def write_csv(path: Path, rows: list[Row]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["sku", "location", "bin", "status", "quantity"])
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[Row]) -> Path:
    columns = list(zip(*rows, strict=True))
    names = ["sku", "location", "bin", "status", "quantity"]
    pq.write_table(pa.table({n: list(c) for n, c in zip(names, columns, strict=True)}), path)
    return path


def digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# A quarter of the profile's examples: each writes two files and runs DuckDB (about 0.2 s),
# so `make test-fast` (profile dev) stays quick and the deep profile still goes deep.
@settings(max_examples=max(10, settings.default.max_examples // 4), deadline=None)
@given(rows=exports(), seed=st.integers(0, 2**16))
def test_an_export_in_any_order_and_format_gives_the_reference_snapshots(
    rows: list[Row], seed: int, tmp_path_factory: Any
) -> None:
    folder: Path = tmp_path_factory.mktemp("export")
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    for path in (
        write_csv(folder / "export.csv", rows),
        write_csv(folder / "shuffled.csv", shuffled),
        write_parquet(folder / "export.parquet", shuffled),
    ):
        assert imported(path) == reference(rows, digest_of(path)), path.name
