"""What one atomic write carries: new sku states, their projection, dedupe marks, offsets.

Pure: builds the change set from the folded states and their rendered projection; the Redis
adapter (atp_service.store.redis_store) executes it in one script. It also names the fields a write fills
in a sku's record and in the outbox, so the store and the readers agree on them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from streams.projector import Projector, Rendered, format_as_of
from streams.state import US_PER_DAY, SkuState, dump_state


class AvailabilityChanged(msgspec.Struct, frozen=True):
    """The event out of contract section 3."""

    channel: str
    sku: str
    available_to_sell: int
    as_of: str


class StockStateChanged(msgspec.Struct, frozen=True):
    """The event out of contract section 12."""

    channel: str
    sku: str
    state: str
    previous_state: str
    available_to_sell: int
    as_of: str


OUT_OF_STOCK: Final = "out_of_stock"


def stock_state(available_to_sell: int, low_stock_threshold: int) -> str:
    """Contract section 12: a sku never seen reads 0, so it is out of stock."""
    if available_to_sell <= 0:
        return OUT_OF_STOCK
    return "low_stock" if available_to_sell <= low_stock_threshold else "in_stock"


_encoder: Final = msgspec.json.Encoder()
_outbox_encoder: Final = msgspec.msgpack.Encoder()
_outbox_decoder: Final = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def projection_field(channel: str) -> str:
    """The field of a sku's stored record that holds its read document for ``channel``."""
    return f"p:{channel}"


def outbox_field(channel: str, sku: str) -> str:
    """The outbox entry of one (channel, sku): a later write replaces an earlier one."""
    return f"{channel}\x1f{sku}"


# Outbox entries other than availability events start with a separator no channel name
# holds, then their kind: a reservation event (key: the sku), a sku's re-plan events in one
# entry (key: the sku; streams/backorders.py, ``expand_events``) or an order's update notice.
_OTHER: Final = "\x1e"
RESERVATION_KIND: Final = "r"
RESERVATIONS_KIND: Final = "R"
UPDATE_KIND: Final = "u"
STATE_KIND: Final = "s"


def reservation_field(sku: str, event_id: str) -> str:
    return f"{_OTHER}{RESERVATION_KIND}\x1f{sku}\x1f{event_id}"


def reservations_field(sku: str) -> str:
    """A write's re-plan events of one sku, in one entry: a re-plan makes two or more per
    backorder, and an entry each cost more to write and to split into steps than the
    events themselves."""
    return f"{_OTHER}{RESERVATIONS_KIND}\x1f{sku}"


def order_update_field(order_id: str) -> str:
    return f"{_OTHER}{UPDATE_KIND}\x1f{order_id}"


def stock_state_field(channel: str, sku: str) -> str:
    """A (channel, sku)'s stock state event: a later write replaces an earlier one."""
    return f"{_OTHER}{STATE_KIND}\x1f{sku}\x1f{channel}"


def channel_and_sku(name: str) -> tuple[str, str]:
    """The (channel, sku) of an availability or stock state entry's name."""
    if name.startswith(_OTHER):
        _, sku, channel = name[1:].split("\x1f", 2)
        return channel, sku
    channel, sku = name.split("\x1f", 1)
    return channel, sku


def outbox_kind(name: str) -> tuple[str, str]:
    """(kind, message key) of an outbox entry's name; kind "" is an availability event."""
    if not name.startswith(_OTHER):
        return "", name.split("\x1f", 1)[1]
    kind, key = name[1:].split("\x1f", 2)[:2]
    return kind, key


@dataclass
class SkuWrite:
    sku: str
    expected_version: int | None  # None: write without checking (no read came first)
    state: bytes
    due_ms: int | None
    fields: dict[str, bytes]
    seen: list[str] = field(default_factory=list)
    # The last ``own`` of ``seen`` are events this write makes itself (a re-plan's): new by
    # their ids, so the store marks them without checking them first.
    own: int = 0


def new_outbox_id(now_us: int | None = None) -> str:
    """Unique per write, and in write order when sorted (the time comes first)."""
    us = time.time_ns() // 1000 if now_us is None else now_us
    return f"{us:017d}-{secrets.token_hex(6)}"


def encode_outbox(outbox: Mapping[str, bytes]) -> bytes:
    return _outbox_encoder.encode(list(outbox.items()))


def decode_outbox(blob: bytes) -> list[tuple[str, bytes]]:
    return _outbox_decoder.decode(blob)


@dataclass
class ChangeSet:
    skus: list[SkuWrite] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    # "channel\x1fsku" -> availability event. Stored as one outbox entry per write (under
    # ``outbox_id``): one value to write and one to delete once the broker has them all.
    outbox: dict[str, bytes] = field(default_factory=dict)
    outbox_id: str = field(default_factory=new_outbox_id)
    # Ledger rows of the consumed messages, staged with the offsets (see streams/ledger.py):
    # shard (streams/shards.py) -> staged field -> rows.
    ledger: dict[int, dict[str, bytes]] = field(default_factory=dict)
    # Plain keys written with the batch: (key, mode, value); mode "nx" fails the whole
    # write if the key exists (an order allocated concurrently), "set" overwrites, "del"
    # removes the key (an allocation undone), "hdel" removes the field of the hash that
    # the value names (an undone allocation's line in its sku's hash of lines).
    puts: list[tuple[str, str, bytes]] = field(default_factory=list)
    # (channel, sku) -> new available_to_sell, for metrics and the changes feed.
    changed: dict[tuple[str, str], int] = field(default_factory=dict)
    # Set by the consumer when it folded skus from what it wrote last instead of reading
    # them: the Redis run_id those writes went to. The write is then refused if the server
    # changed, and (as a conflict on the sku) if one of the skus' ``seen`` ids is marked
    # already or one of ``marked`` (sku -> event_ids taken as applied) is not.
    assumed_server: str = ""
    marked: dict[str, list[str]] = field(default_factory=dict)
    # Order lines whose backorder was planned again, per sku: the line's field in the sku's
    # hash of lines -> its record as written (streams/backorders.py line_records).
    lines: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # Stock taken today per location with a capacity (contract section 11): location ->
    # (units, the capacity). The write is refused if a location's count would pass it.
    capacity: dict[str, tuple[int, int]] = field(default_factory=dict)
    capacity_day: int = 0  # the UTC day counted, in days since the epoch
    # The same stock per reservation, for a store in several shards, which claims it before
    # the write: "<sku>\x1f<reservation_id>" -> (location, units, the capacity).
    claims: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def count_capacity(
    changes: ChangeSet, projector: Projector, taken: Sequence[Sequence[int]], now_us: int
) -> None:
    """Add the stock ``taken`` (per line, units per network location) to the write's
    counts of the locations with a capacity (contract section 11)."""
    for location, units in projector.capacity_taken(taken).items():
        before = changes.capacity.get(location, (0, 0))[0]
        changes.capacity[location] = (before + units, projector.capacities[location])
    if changes.capacity:
        changes.capacity_day = now_us // US_PER_DAY


def claim_capacity(
    changes: ChangeSet,
    projector: Projector,
    reservations: Iterable[tuple[str, str, str, int]],
    now_us: int,
) -> None:
    """Add the stock ``reservations`` made, (sku, reservation_id, location, units), to the
    write's claims at the locations with a capacity: what ``count_capacity`` counts, named
    by reservation."""
    if not projector.capacities:
        return  # ``reservations`` is not even walked: a re-plan makes thousands
    for sku, reservation_id, location, units in reservations:
        limit = projector.capacities.get(location)
        if limit is not None and units:
            changes.claims[claim_key(sku, reservation_id)] = (location, units, limit)
    if changes.claims:
        changes.capacity_day = now_us // US_PER_DAY


def claim_key(sku: str, reservation_id: str) -> str:
    return f"{sku}\x1f{reservation_id}"


def build_changeset(
    states: Sequence[SkuState],
    versions: Mapping[str, int],
    projector: Projector,
    now_us: int,
    seen: Mapping[str, Iterable[str]] | None = None,
    offsets: Mapping[str, int] | None = None,
) -> ChangeSet:
    """Render the projection of ``states`` and collect everything to write for them.

    An availability event is queued in the outbox for every (channel, sku) whose
    available_to_sell differs from the value last written (kept in the state), so the
    announcement is written atomically with the change and survives a crash.
    """
    rendered: Rendered = projector.render(states, now_us)
    as_of = format_as_of(now_us)
    out = ChangeSet(offsets=dict(offsets or {}), outbox_id=new_outbox_id(now_us))
    network = projector.network
    field_of = {channel: projection_field(channel) for channel in network.channels}
    threshold = dict(zip(network.channels, network.low_stock_threshold.tolist(), strict=True))
    seen = seen or {}
    for state in states:
        ats = rendered.available_to_sell[state.sku]
        if ats != state.last_ats:
            for channel, value in ats.items():
                previous = state.last_ats.get(channel)
                # A sku first seen at zero has not changed from "never seen" (which reads 0).
                if previous == value or (previous is None and value == 0):
                    continue
                out.changed[(channel, state.sku)] = value
                out.outbox[outbox_field(channel, state.sku)] = _encoder.encode(
                    AvailabilityChanged(channel, state.sku, value, as_of)
                )
                now_state = stock_state(value, threshold[channel])
                was = stock_state(previous or 0, threshold[channel])
                if now_state != was:
                    out.outbox[stock_state_field(channel, state.sku)] = _encoder.encode(
                        StockStateChanged(channel, state.sku, now_state, was, value, as_of)
                    )
            state = msgspec.structs.replace(state, last_ats=ats)
        due = rendered.next_change_us.get(state.sku)
        out.skus.append(
            SkuWrite(
                sku=state.sku,
                expected_version=versions.get(state.sku, 0),
                state=dump_state(state),
                due_ms=None if due is None else -(-due // 1000),
                fields={
                    field_of[channel]: doc for channel, doc in rendered.documents[state.sku].items()
                },
                seen=list(seen.get(state.sku, ())),
            )
        )
    return out
