"""`atp import` (contract section 8) against a real broker, consumer and Redis: a CSV and a
Parquet export become stock snapshots; importing the same file again changes nothing;
`--full` zeroes what the file no longer lists at its locations; a bad file produces nothing
and names the row and the column."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from atp_service.store import keys
from streams.changeset import projection_field
from tests.conftest import Stack
from tests.faults.harness import atp_cli, read_all
from tests.integration.helpers import receipt

pytestmark = pytest.mark.integration

AS_OF = "2030-01-01T06:00:00Z"  # after every other event here


def on_hand(client: redis.Redis, sku: str, channel: str = "web") -> int | None:
    raw = client.hget(keys.SINGLE.sku_key(sku), projection_field(channel))
    return None if raw is None else int(json.loads(raw)["on_hand"])


def wait_for(client: redis.Redis, want: dict[str, int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (got := {sku: on_hand(client, sku) for sku in want}) != want:
        assert time.monotonic() < deadline, f"on_hand {got}, expected {want}"
        time.sleep(0.1)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("sku,location,bin,status,quantity,note\n" + "\n".join(rows) + "\n")
    return path


def test_a_stock_export_becomes_snapshots_once(stack: Stack, tmp_path: Path) -> None:
    settings = stack.settings
    client = redis.Redis.from_url(settings.redis.url)
    stack.start_consumer()
    stack.produce([receipt("SKU-Z", 4, bin_="X")])
    wait_for(client, {"SKU-Z": 4})

    export = write_csv(tmp_path / "stock.csv", [
        "SKU-A,DC-EAST,B1,available,5,first", "SKU-A,DC-EAST,B2,damaged,2,",
        "SKU-A,DC-WEST,B1,available,3,", "SKU-B,DC-EAST,B1,available,7,",
    ])  # fmt: skip
    done = atp_cli(stack, "import", str(export), "--as-of", AS_OF)
    assert done.returncode == 0, done.stderr
    assert "imported 4 rows: 2 skus at 2 locations, 3 snapshots (0 zeroed)" in done.stdout
    wait_for(client, {"SKU-A": 8, "SKU-B": 7, "SKU-Z": 4})  # damaged is not sellable

    again = atp_cli(stack, "import", str(export), "--as-of", AS_OF)
    assert again.returncode == 0, again.stderr
    messages = read_all(settings.kafka.bootstrap, settings.topics.movements)
    snapshots = [json.loads(m.value()) for m in messages if b"stock_snapshot" in m.value()]
    assert len(snapshots) == 6 and len({s["event_id"] for s in snapshots}) == 3
    assert all(m.key() == json.loads(m.value())["sku"].encode() for m in messages)

    # --full: the file is the whole stock of DC-EAST now; DC-WEST is not in it.
    full = write_csv(tmp_path / "east.csv", ["SKU-A,DC-EAST,B1,available,1,"])
    done = atp_cli(stack, "import", str(full), "--full", "--as-of", "2030-01-01T07:00:00Z")
    assert done.returncode == 0, done.stderr
    assert "1 skus at 1 locations, 3 snapshots (2 zeroed)" in done.stdout
    wait_for(client, {"SKU-A": 4, "SKU-B": 0, "SKU-Z": 0})

    # Parquet, with its own column order.
    table = pa.table(
        {
            "quantity": [9],
            "status": ["available"],
            "bin": ["P1"],
            "location": ["DC-WEST"],
            "sku": ["SKU-P"],
        }
    )
    pq.write_table(table, tmp_path / "stock.parquet")
    done = atp_cli(stack, "import", str(tmp_path / "stock.parquet"), "--as-of", AS_OF)
    assert done.returncode == 0, done.stderr
    wait_for(client, {"SKU-P": 9})


@pytest.mark.parametrize(
    ("rows", "said"),
    [
        (["A,DC-EAST,B1,available,5,", "A,DC-EAST,B2,available,1.5,"], "row 2, column quantity"),
        (["A,DC-EAST,B1,available,-3,"], "row 1, column quantity"),
        (["A,DC-EAST,B1,available,5,", "B,,B1,available,5,"], "row 2, column location"),
        (["A,DC-EAST,B1,available,5,", "A,DC-EAST,B1,available,6,"], "row 2, column bin"),
    ],
)
def test_a_bad_export_produces_nothing(
    stack: Stack, tmp_path: Path, rows: list[str], said: str
) -> None:
    export = write_csv(tmp_path / "bad.csv", rows)
    refused = atp_cli(stack, "import", str(export))
    assert refused.returncode == 2
    assert said in refused.stderr and "nothing was produced" in refused.stderr
    assert read_all(stack.settings.kafka.bootstrap, stack.settings.topics.movements) == []


def test_an_export_without_a_column_is_refused(stack: Stack, tmp_path: Path) -> None:
    export = tmp_path / "short.csv"
    export.write_text("sku,location,bin,quantity\nA,DC-EAST,B1,5\n")
    refused = atp_cli(stack, "import", str(export))
    assert refused.returncode == 2 and "missing column(s) status" in refused.stderr
