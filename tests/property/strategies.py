"""What the property tests of batch allocation share: a batch of order lines over a network
and its supply, the draw of integer arrays for one, and the engine's tuning forced."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import numpy as np
from hypothesis import strategies as st

import allocation.allocate as engine
from allocation.network import Network, Supply

TODAY = 20_000
FIELDS = ("taken", "backordered", "promise_day", "promise_location", "unfilled", "reserved")


@dataclass(frozen=True)
class Batch:
    supply: Supply
    network: Network
    channel: np.ndarray
    sku: np.ndarray
    quantity: np.ndarray
    backorder: np.ndarray

    def lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.channel, self.sku, self.quantity, self.backorder

    def without(self, line: int) -> Batch:
        keep = np.arange(self.quantity.size) != line
        return Batch(
            self.supply,
            self.network,
            self.channel[keep],
            self.sku[keep],
            self.quantity[keep],
            self.backorder[keep],
        )


def ints(draw: st.DrawFn, shape: tuple[int, ...], low: int, high: int) -> np.ndarray:
    size = int(np.prod(shape))
    values = draw(st.lists(st.integers(low, high), min_size=size, max_size=size))
    return np.array(values, dtype=np.int64).reshape(shape)


@contextmanager
def tuning(run_rounds: int, window: int) -> Iterator[None]:
    """Force the engine's mechanisms: rounds of runs, speculation, small windows."""
    with (
        mock.patch.object(engine, "RUN_ROUNDS", run_rounds),
        mock.patch.object(engine, "SPECULATION_WINDOW", window),
    ):
        yield
