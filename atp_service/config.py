"""Configuration: one TOML file (``ATP_CONFIG``) plus a few environment overrides.

This module is the only reader of ``os.environ`` in the service: every other part receives
a :class:`Settings`. A config that is invalid stops start-up with a :class:`ConfigError`
whose message names the offending key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from allocation.kits import KitComponent, KitDefinition, KitRefused, KitRules

Scope = Literal["availability:read", "allocations:write", "admin"]
SCOPES: Final = ("availability:read", "allocations:write", "admin")

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class ConfigError(Exception):
    """The configuration cannot be used. Operator action: fix the named key and restart."""


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


CLUSTER_SHARDS: Final = 16


class RedisSettings(_Section, frozen=True):
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False  # true: ``url`` names one node of a Redis Cluster (contract 7)
    # How many groups the data is kept in (streams/shards.py), each in one cluster slot:
    # fixed for a store's life (its keys are named after them). 0: 1 on a single Redis,
    # CLUSTER_SHARDS on a cluster, enough to spread over about 8 primaries.
    shards: Annotated[int, msgspec.Meta(ge=0, le=16384)] = 0
    # The most skus one script of the consumer writes (a batch's write goes in steps of
    # this many, docs/architecture.md): Redis runs one script at a time, so this bounds
    # how long one of the consumer's scripts holds the allocations and reads behind it.
    skus_per_script: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 16

    @property
    def shard_count(self) -> int:
        if self.shards:
            return self.shards
        return CLUSTER_SHARDS if self.cluster else 1


class KafkaSettings(_Section, frozen=True):
    bootstrap: str = "127.0.0.1:9092"
    group_id: str = "atp-projector"
    # Tansu and small clusters join a group much faster with a short session timeout.
    session_timeout_ms: Annotated[int, msgspec.Meta(ge=1000)] = 6000


class LedgerSettings(_Section, frozen=True):
    dir: str = "./var/ledger"


class TopicSettings(_Section, frozen=True):
    movements: Name = "wms.bin-movements"
    reservations: Name = "oms.reservations"
    inbound: Name = "erp.inbound"
    dead_letter: Name = "atp.dead-letter"
    availability: Name = "atp.availability"
    allocation_updates: Name = "atp.allocation-updates"
    stock_states: Name = "atp.stock-states"
    # Beyond the contract: safety-stock overrides set over HTTP, for `atp rebuild`
    # (atp_service/overrides.py). Compacted.
    overrides: Name = "atp.overrides"

    def names(self) -> list[str]:
        """Every topic the service reads or writes."""
        return [str(name) for name in msgspec.structs.astuple(self)]


class StatusSettings(_Section, frozen=True):
    sellable: tuple[Name, ...] = ("available",)


class ChannelSettings(_Section, frozen=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    priority: Positive
    locations: tuple[Name, ...]
    safety_stock: NonNegative = 0
    inbound_horizon_days: NonNegative = 14
    # Per-sku overrides from the file; overrides set over HTTP take precedence over these.
    safety_stock_overrides: dict[str, NonNegative] = {}
    # Buffers and caps (contract section 11); the defaults leave section 1 unchanged.
    safety_stock_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    min_available: NonNegative = 0
    max_available: NonNegative | None = None
    max_order_quantity: Positive | None = None
    low_stock_threshold: NonNegative = 0


class KitSettings(_Section, frozen=True):
    """A kit of the config file (contract section 10); kits set over HTTP win over these."""

    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    components: tuple[KitComponent, ...]

    def definition(self) -> KitDefinition:
        return KitDefinition(self.sku, self.components)


class LocationSettings(_Section, frozen=True):
    """A location's daily capacity (contract section 11)."""

    name: Name
    daily_capacity_units: NonNegative


class ApiKeySettings(_Section, frozen=True):
    name: Name
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{64}$")]
    scopes: tuple[Scope, ...]


class ConsumerSettings(_Section, frozen=True):
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100_000
    batch_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 5
    # How long applied event_ids are remembered; a duplicate older than this is applied again.
    dedupe_window_days: Annotated[float, msgspec.Meta(gt=0)] = 7.0
    # How often expired reservations and day changes are swept (contract: within 1 s).
    sweep_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=1000)] = 200
    max_message_bytes: Positive = 1_000_000
    # The consumer's own Prometheus /metrics port on all interfaces; 0 turns it off.
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9108


# Ceilings of the allocation input limits: the OpenAPI document states them (request body
# types in atp_service/orders.py), so a deployment may lower the limits, never raise them.
MAX_LINE_QUANTITY: Final = 1_000_000
MAX_LINES_PER_ORDER: Final = 500
MAX_BATCH_ORDERS: Final = 10_000


class ApiSettings(_Section, frozen=True):
    max_line_quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_LINE_QUANTITY)] = MAX_LINE_QUANTITY
    max_lines_per_order: Annotated[int, msgspec.Meta(ge=1, le=MAX_LINES_PER_ORDER)] = (
        MAX_LINES_PER_ORDER
    )
    max_batch_orders: Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH_ORDERS)] = MAX_BATCH_ORDERS
    max_body_bytes: Positive = 16 * 1024 * 1024
    # Upper bound on how much older than Redis an in-process cached read may be.
    cache_staleness_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 250


class Settings(_Section, frozen=True):
    redis: RedisSettings = RedisSettings()
    kafka: KafkaSettings = KafkaSettings()
    ledger: LedgerSettings = LedgerSettings()
    topics: TopicSettings = TopicSettings()
    statuses: StatusSettings = StatusSettings()
    channels: tuple[ChannelSettings, ...] = ()
    api_keys: tuple[ApiKeySettings, ...] = ()
    consumer: ConsumerSettings = ConsumerSettings()
    api: ApiSettings = ApiSettings()
    kits: tuple[KitSettings, ...] = ()
    # Named so as not to hide the ``locations`` property (every location channels sell from).
    capacities: tuple[LocationSettings, ...] = msgspec.field(default=(), name="locations")

    def channel(self, name: str) -> ChannelSettings | None:
        for channel in self.channels:
            if channel.name == name:
                return channel
        return None

    @property
    def locations(self) -> tuple[str, ...]:
        """Every location any channel sells from, in first-seen order."""
        seen: dict[str, None] = {}
        for channel in self.channels:
            for location in channel.locations:
                seen.setdefault(location, None)
        return tuple(seen)


ENV_OVERRIDES: Final[Mapping[str, tuple[str, str]]] = {
    "ATP_REDIS_URL": ("redis", "url"),
    "ATP_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "ATP_LEDGER_DIR": ("ledger", "dir"),
    "ATP_REDIS_CLUSTER": ("redis", "cluster"),
}
_BOOLEANS: Final = {"1": True, "true": True, "0": False, "false": False}

_PATH_IN_MESSAGE = re.compile(r"at `\$\.?(.*)`")


def parse_config(text: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse TOML text into Settings, apply environment overrides, and validate.

    Raises:
        ConfigError: naming the key that is wrong.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config is not valid TOML: {exc}") from None
    for env_name, (section, key) in ENV_OVERRIDES.items():
        value = (environ or {}).get(env_name)
        if value:
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"config key `{section}` must be a table")
            if env_name == "ATP_REDIS_CLUSTER":
                if value.lower() not in _BOOLEANS:
                    raise ConfigError(
                        f"ATP_REDIS_CLUSTER must be 1, true, 0 or false, not {value!r}"
                    )
                raw[section][key] = _BOOLEANS[value.lower()]
                continue
            raw[section][key] = value
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {_readable(str(exc))}") from None
    _validate(settings)
    return settings


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file named by ATP_CONFIG (default ./atp.toml) and the ATP_* overrides."""
    env = os.environ if environ is None else environ
    path = Path(env.get("ATP_CONFIG", "./atp.toml"))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} (ATP_CONFIG) does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} (ATP_CONFIG) cannot be read: {exc}") from None
    return parse_config(text, env)


def _readable(message: str) -> str:
    # msgspec says "... - at `$.channels[0].locations`"; operators think in TOML key paths.
    return _PATH_IN_MESSAGE.sub(lambda m: f"at key `{m.group(1) or '<root>'}`", message)


def _validate(settings: Settings) -> None:
    if not settings.channels:
        raise ConfigError("invalid config: `channels` must define at least one channel")
    names: set[str] = set()
    for i, channel in enumerate(settings.channels):
        where = f"`channels[{i}]` ({channel.name!r})"
        if channel.name in names:
            raise ConfigError(f"invalid config: duplicate channel name {channel.name!r} at {where}")
        names.add(channel.name)
        if not channel.locations:
            raise ConfigError(f"invalid config: {where}.locations must not be empty")
        if len(set(channel.locations)) != len(channel.locations):
            raise ConfigError(f"invalid config: {where}.locations lists a location twice")
        if channel.max_available is not None and channel.min_available > channel.max_available:
            raise ConfigError(
                f"invalid config: {where}.min_available ({channel.min_available}) is above"
                f" max_available ({channel.max_available})"
            )
    kits: dict[str, KitDefinition] = {}
    for i, kit in enumerate(settings.kits):
        if kit.sku in kits:
            raise ConfigError(f"invalid config: kit {kit.sku!r} is defined twice at `kits[{i}]`")
        kits[kit.sku] = kit.definition()
    rules = KitRules(kits)
    for i, kit in enumerate(settings.kits):
        try:
            rules.check(kits[kit.sku])
        except KitRefused as exc:
            raise ConfigError(f"invalid config: `kits[{i}]` ({kit.sku!r}): {exc}") from None
    capacity_names: set[str] = set()
    sold_from = set(settings.locations)
    for i, location in enumerate(settings.capacities):
        if location.name in capacity_names:
            raise ConfigError(
                f"invalid config: location {location.name!r} is listed twice at `locations[{i}]`"
            )
        capacity_names.add(location.name)
        if location.name not in sold_from:
            raise ConfigError(
                f"invalid config: `locations[{i}]` ({location.name!r}) is no channel's location"
            )
    if not settings.statuses.sellable:
        raise ConfigError("invalid config: `statuses.sellable` must not be empty")
    key_names: set[str] = set()
    for i, key in enumerate(settings.api_keys):
        if key.name in key_names:
            raise ConfigError(
                f"invalid config: duplicate api key name {key.name!r} at `api_keys[{i}]`"
            )
        key_names.add(key.name)
        if not key.scopes:
            raise ConfigError(f"invalid config: `api_keys[{i}].scopes` must not be empty")
