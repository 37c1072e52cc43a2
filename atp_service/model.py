"""The contract's model as this deployment configures it: one place that turns Settings
into the pure core's Projector, for the API, the consumer and the ledger tools alike."""

from __future__ import annotations

from allocation.network import Network
from atp_service.config import Settings
from streams.projector import Projector


def projector_for(settings: Settings) -> Projector:
    return Projector(
        network=Network.of(settings.channels),
        sellable=frozenset(settings.statuses.sellable),
        config_overrides=tuple(c.safety_stock_overrides for c in settings.channels),
        capacities={c.name: c.daily_capacity_units for c in settings.capacities},
    )
