"""One writer of config files for the stacks this project starts itself: `atp dev`, the
tests and the benchmarks. Each says what differs (channels, keys, ports, topic names);
the file's form is written here once, in the contract's format (section 5).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256

ALL_SCOPES = ("availability:read", "allocations:write", "admin")


@dataclass(frozen=True)
class Channel:
    name: str
    priority: int
    locations: tuple[str, ...]
    safety_stock: int = 0
    inbound_horizon_days: int = 14
    # Optional keys of contract section 11, written only when set.
    buffers: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str  # the key itself; the file holds only its sha256
    scopes: tuple[str, ...] = ALL_SCOPES


@dataclass(frozen=True)
class ConfigFile:
    redis_url: str
    bootstrap: str
    ledger_dir: str
    channels: Sequence[Channel]
    api_keys: Sequence[ApiKey]
    group_id: str = "atp-projector"
    topic_prefix: str | None = None  # None: the contract's default topic names
    consumer: Mapping[str, int | float] = field(default_factory=dict)
    extra: str = ""  # more TOML, appended as it is
    redis: Mapping[str, object] = field(default_factory=dict)  # [redis] keys beside the url
    kafka: Mapping[str, object] = field(default_factory=dict)  # [kafka] keys beside these two

    def text(self) -> str:
        parts = [
            _table("redis", {"url": self.redis_url, **self.redis}),
            _table("kafka", {"bootstrap": self.bootstrap, "group_id": self.group_id, **self.kafka}),
            _table("ledger", {"dir": self.ledger_dir}),
        ]
        if self.topic_prefix is not None:
            p = self.topic_prefix
            parts.append(_table("topics", {
                "movements": f"{p}.movements", "reservations": f"{p}.reservations",
                "inbound": f"{p}.inbound", "dead_letter": f"{p}.dead-letter",
                "availability": f"{p}.availability",
                "allocation_updates": f"{p}.allocation-updates",
                "stock_states": f"{p}.stock-states",
                "overrides": f"{p}.overrides",
            }))  # fmt: skip
        parts.append(_table("statuses", {"sellable": ["available"]}))
        if self.consumer:
            parts.append(_table("consumer", dict(self.consumer)))
        for c in self.channels:
            parts.append(_table("[channels]", {
                "name": c.name, "priority": c.priority, "locations": list(c.locations),
                "safety_stock": c.safety_stock, "inbound_horizon_days": c.inbound_horizon_days,
                **c.buffers,
            }))  # fmt: skip
        for k in self.api_keys:
            digest = sha256(k.key.encode()).hexdigest()
            parts.append(
                _table("[api_keys]", {"name": k.name, "sha256": digest, "scopes": list(k.scopes)})
            )
        return "\n".join(parts) + self.extra


def _table(name: str, values: Mapping[str, object]) -> str:
    # JSON's strings, numbers and arrays of them are valid TOML values.
    lines = [f"[{name}]", *(f"{key} = {json.dumps(value)}" for key, value in values.items())]
    return "\n".join(lines) + "\n"
