"""Batch allocation with the rules of contract section 11 on (channel buffers, order caps,
location capacity) against the same batch without them, and against the plain-Python
reference, in the same run. No services: the engine alone, as ``benchmarks.allocation``
times it.

The batch is ``benchmarks.allocation.batch_input`` (100,000 lines over 50,000 skus, 5
channels, 8 locations, 30% backorder, 50,000 inbound lines; small: a tenth). Three ways,
alternating, each run on the same supply and demand:

- plain: ``allocation.allocate.allocate`` on the channels as they are;
- rules: the same channels with buffers (``min_available`` 1 on c1, ``max_available`` 50 on
  c2, ``max_order_quantity`` 4 on c3, ``safety_stock_percent`` 10 on c4, applied to the
  supply with ``with_percent`` as the projector does), then the check
  ``atp_service.orders.plan`` makes against the day's capacity (``fits_room``): every location
  has a capacity of 120% of what the plain batch takes there, so no line meets it and the
  engine's answer stands (checked: the line-by-line fallback does not run);
- reference: ``allocation.reference.allocate_reference`` on the buffered channels; its
  answer must equal the engine's.

Informative, once: the same buffered batch when capacity does bind (80% of what it takes
at each location), which ``plan`` then allocates again line by line within the capacity
(``allocation.in_turn.allocate_in_turn`` with the room, lines in channel priority order).

Targets (issue 19): rules at least 0.8x the plain batch's lines/s, and at least 10x the
reference's.

``python -m benchmarks.batch_rules --size small|full``
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from allocation.allocate import Allocation, allocate
from allocation.in_turn import Line, allocate_in_turn
from allocation.network import Network, Supply
from allocation.projection import with_percent
from allocation.reference import allocate_reference
from atp_service.orders import fits_room
from benchmarks.allocation import TODAY, batch_input
from benchmarks.common import Figure, Report, parse_args, say, stop_on_sigterm, timed

SIZES = {
    "small": {"lines": 10_000, "skus": 5_000, "inbound": 5_000},
    "full": {"lines": 100_000, "skus": 50_000, "inbound": 50_000},
}
FIELDS = ("taken", "backordered", "promise_day", "promise_location", "unfilled", "reserved")


class _Channel:
    def __init__(self, network: Network, c: int, **buffers: int | None) -> None:
        order = np.argsort(network.rank[c])
        self.name = network.channels[c]
        self.priority = int(network.priority[c])
        self.locations = [network.locations[i] for i in order if network.rank[c][i] >= 0]
        self.safety_stock = int(network.safety_stock[c])
        self.inbound_horizon_days = int(network.horizon[c])
        self.safety_stock_percent = 0
        self.min_available = 0
        self.max_available: int | None = None
        self.max_order_quantity: int | None = None
        self.low_stock_threshold = 0
        for name, value in buffers.items():
            setattr(self, name, value)


def with_rules(network: Network, supply: Supply) -> tuple[Network, Supply]:
    buffers: list[dict[str, int | None]] = [
        {}, {"min_available": 1}, {"max_available": 50}, {"max_order_quantity": 4},
        {"safety_stock_percent": 10},
    ]  # fmt: skip
    ruled = Network.of([_Channel(network, c, **b) for c, b in enumerate(buffers)])
    if list(ruled.locations) != list(network.locations):
        raise AssertionError("the buffered network must keep the locations' order")
    safety = with_percent(supply.safety_stock, supply.on_hand, ruled)
    return ruled, dataclasses.replace(supply, safety_stock=safety)


def rules_run(
    supply: Supply, network: Network, demand: tuple[Any, ...], room: list[int]
) -> tuple[Allocation, bool]:
    """The engine, then ``plan``'s capacity check; True when the check passed."""
    outcome = allocate(supply, network, TODAY, *demand)
    return outcome, fits_room(outcome.taken.sum(axis=0).tolist(), room)


def line_by_line(
    supply: Supply, network: Network, demand: tuple[Any, ...], room: list[int]
) -> float:
    channel, sku, quantity, backorder = (d.tolist() for d in demand)
    priority = network.priority.tolist()
    order = sorted(range(len(channel)), key=lambda i: (priority[channel[i]], i))
    lines = [Line(channel[i], sku[i], quantity[i], backorder[i]) for i in order]
    started = time.perf_counter()
    if allocate_in_turn(supply, network, TODAY, lines, room) is None:
        raise AssertionError("the line-by-line path refused the batch")
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("batch allocation with buffers, caps and capacity vs without", argv)
    stop_on_sigterm()
    size = SIZES[args.size]
    n = size["lines"]
    report = Report("batch_rules", args.size, "Batch allocation: section 11 rules on vs off")
    report.parameters = {**size, "runs": args.runs}
    supply, network, demand = batch_input(size["lines"], size["skus"], size["inbound"])
    ruled, ruled_supply = with_rules(network, supply)
    taken = allocate(supply, network, TODAY, *demand).taken.sum(axis=0)
    room = [int(t * 1.2) + 1 for t in taken.tolist()]
    plain: list[float] = []
    rules: list[float] = []
    reference: list[float] = []
    with timed("batch runs"):
        for run in range(args.runs):
            started = time.perf_counter()
            allocate(supply, network, TODAY, *demand)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            ours, within = rules_run(ruled_supply, ruled, demand, room)
            rules.append(time.perf_counter() - started)
            if not within:
                raise AssertionError("the capacity bound: the benchmark means it not to")
            started = time.perf_counter()
            theirs = allocate_reference(ruled_supply, ruled, TODAY, *demand)
            reference.append(time.perf_counter() - started)
            for name in FIELDS:
                if not np.array_equal(getattr(ours, name), getattr(theirs, name)):
                    raise AssertionError(f"engine and reference differ in {name}")
            say(f"  run {run + 1}/{args.runs}: plain {plain[-1] * 1000:.1f} ms, rules "
                f"{rules[-1] * 1000:.1f} ms, reference {reference[-1] * 1000:.0f} ms")  # fmt: skip
    binding = [int(t * 0.8) for t in taken.tolist()]
    if fits_room(allocate(ruled_supply, ruled, TODAY, *demand).taken.sum(axis=0).tolist(), binding):
        raise AssertionError("the binding capacity did not bind")
    fallback = line_by_line(ruled_supply, ruled, demand, binding)
    report.add(Figure(
        "batch, buffers + caps + capacity (not binding): lines/s", "lines/s",
        [n / s for s in rules], "the same batch without them", [n / s for s in plain],
        targets=[("ratio", ">=", 0.8)], target_text="x>= 0.80",
    ))  # fmt: skip
    report.add(Figure(
        "batch, buffers + caps + capacity: lines/s against the reference", "lines/s",
        [n / s for s in rules], "plain-Python reference, same rules", [n / s for s in reference],
        targets=[("ratio", ">=", 10.0)], target_text="x>= 10",
    ))  # fmt: skip
    report.add(Figure(
        "batch when capacity binds (line by line within it): lines/s", "lines/s",
        [n / fallback], "the engine, capacity not binding", [n / s for s in rules],
        informative=True,
    ))  # fmt: skip
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
