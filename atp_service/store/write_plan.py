"""A consumer's or the API's write as the write script's calls: a ChangeSet split per
shard (``split``), in steps of at most ``step_skus`` skus (``steps``), each step's keys and
arguments (``script_arguments``), and what the script's replies say (``refused_skus``,
``skus_to_read_again``). No I/O: atp_service/store/sending.py sends the calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, Final

from atp_service.store import keys
from atp_service.store.keys import SpansShards
from atp_service.store.marks import DigestKeyChanged, digests
from streams.backorders import order_of_line
from streams.changeset import (
    ChangeSet,
    encode_outbox,
    order_update_field,
    outbox_kind,
)
from streams.store import ProjectionMissing, ServerReplaced

WRITE_SCRIPT: Final = resources.files("atp_service.store").joinpath("write.lua").read_text()
REPLACED: Final = b"\x1freplaced"  # the write script's answer when its server changed
FULL: Final = b"\x1fcapacity"  # ... when a location's count for the day would pass its capacity
STEPS: Final = b"\x1fsteps"  # ... when a last step finds that not all its first steps landed
DIGEST: Final = b"\x1fdigest"  # ... when its digests were made with a key not the shard's


def script_arguments(
    changes: ChangeSet,
    *,
    group_id: str,
    now_ms: int,
    seen_cutoff_ms: int,
    publish: bool = True,
    layout: keys.Layout = keys.SINGLE,
    shard: int = 0,
    step: str = "",
    token: str = "",
    ends: str = "",
    digest_key: bytes | None = None,
) -> tuple[list[str], list[Any]]:
    """The write script's keys and arguments for ``changes``, all of one ``shard``
    (``step``, ``token`` and the write's ``ends``, kept by first steps: see ``steps``), its
    event ids as digests with the shard's ``digest_key`` (None: the shard has none, and
    the script refuses the write)."""
    marks_with = digest_key or b""
    bucket = now_ms // keys.MARKS_BUCKET_MS
    key_list = [
        layout.due_key(shard),
        layout.shard_offsets_key(shard, group_id),
        layout.outbox_key(shard),
        layout.marker_key(shard),
        layout.staged_key(shard),
    ]
    args: list[Any] = [
        len(changes.skus), seen_cutoff_ms, now_ms, layout.invalidations(shard) if publish else "",
        changes.assumed_server,
    ]  # fmt: skip
    # Every sku writes the same projection fields (one per channel): names once, then
    # only the values per sku.
    names = tuple(changes.skus[0].fields) if changes.skus else ()
    args.append(len(names))
    args += names
    puts = list(changes.puts)
    if changes.capacity:
        day = layout.capacity_key(changes.capacity_day)
        puts += [
            (day, f"c\x1f{limit}\x1f{location}", str(units).encode())
            for location, (units, limit) in changes.capacity.items()
        ]
    args.append(len(puts))
    for key, mode, value in puts:
        key_list.append(key)
        args.append(mode)
        args.append(value)
    streams: dict[str, list[str]] = {}
    for channel, sku in changes.changed:
        streams.setdefault(channel, []).append(sku)
    args.append(len(streams))
    min_id = max(0, now_ms - keys.CHANGES_RETENTION_MS)
    for channel, skus in streams.items():
        key_list.append(layout.changes_key(shard, channel))
        args += [min_id, len(skus), *skus]
    args.append(len(changes.offsets))
    for name, offset in changes.offsets.items():
        args += [name, offset]
    if changes.outbox:
        args += [changes.outbox_id, encode_outbox(changes.outbox)]
    else:
        args += ["", ""]
    ledger = changes.ledger.get(shard, {})
    args.append(len(ledger))
    for name, rows in ledger.items():
        args += [name, rows]
    args.append(len(changes.marked))
    for ids in changes.marked.values():
        args.append(len(ids))
        args += digests(marks_with, ids)
    args += [step, token, ends if step == "p" else "", marks_with.hex()]
    args.append(len(changes.lines))
    for records in changes.lines.values():
        args.append(len(records))
        for name_and_record in records.items():
            args += name_and_record
    for write in changes.skus:
        key_list += [layout.sku_key(write.sku), layout.marks_key(write.sku, bucket)]
        args += [
            "" if write.expected_version is None else write.expected_version,
            write.state,
            "" if write.due_ms is None else write.due_ms,
        ]
        if tuple(write.fields) != names:
            raise ValueError(f"sku {write.sku}: projection fields differ from the batch's")
        args += write.fields.values()
        args += [len(write.seen), write.own]
        args += digests(marks_with, write.seen)
    key_list += [layout.marks_key(sku, bucket) for sku in changes.marked]
    key_list.append(layout.kits_flag_key(shard))
    key_list += [layout.lines_key(sku) for sku in changes.lines]
    return key_list, args


# An order's notice in the outbox: this, then the order_id.
_NOTICE: Final = order_update_field("")


def carry_notices(outbox: Mapping[str, bytes], holders: Iterable[ChangeSet]) -> set[str]:
    """Put each order's notice of ``outbox`` into every holder (a shard's part, a step) with
    lines of that order; the names of the notices carried. If such a holder's script lands
    and the write is then cut short, its skus' events are duplicates when the batch is
    folded again and nothing plans them again; the holders that did not land are planned
    again, and make their notices again. A notice is read when it is sent, so the copies
    say the same; the write's own publishing sends one."""
    carried: set[str] = set()
    for holder in holders:
        for records in holder.lines.values():
            for line in records:
                name = _NOTICE + order_of_line(line)
                event = outbox.get(name)
                if event is not None:
                    holder.outbox[name] = event
                    carried.add(name)
    return carried


def split(changes: ChangeSet, layout: keys.Layout) -> list[tuple[int, ChangeSet]]:
    """The parts of ``changes`` per shard, each written by one script. A sku's write, dedupe
    marks, line records, changes-feed entries, outbox entries and ledger rows go with its
    shard; every part moves the shard's offsets. Orders, keys of no shard, are refused with
    several shards (they are then written in steps), and capacity counts are left to the
    caller, which claims them first (atp_service/store/capacity.py)."""
    if layout.shards == 1:
        return [(0, changes)]
    shard = layout.shard
    parts: dict[int, ChangeSet] = {}

    def part(s: int) -> ChangeSet:
        found = parts.get(s)
        if found is None:
            found = parts[s] = ChangeSet(
                offsets=changes.offsets,
                outbox_id=changes.outbox_id,
                assumed_server=changes.assumed_server,
            )
        return found

    for write in changes.skus:
        part(shard(write.sku)).skus.append(write)
    for s, staged in changes.ledger.items():
        part(s).ledger[s] = staged
    for sku, ids in changes.marked.items():
        part(shard(sku)).marked[sku] = ids
    for sku, records in changes.lines.items():
        part(shard(sku)).lines[sku] = records
    for pair, value in changes.changed.items():
        part(shard(pair[1])).changed[pair] = value
    carried = carry_notices(changes.outbox, list(parts.values()))
    loose: dict[str, bytes] = {}
    for name, event in changes.outbox.items():
        if not name.startswith(_NOTICE):
            part(shard(outbox_kind(name)[1])).outbox[name] = event  # keyed by its sku
        elif name not in carried:  # read when it is sent, so any part may carry it
            loose[name] = event
    if changes.puts:
        # Orders are keys of no shard: with several shards an order is written in steps
        # (atp_service/sharded_allocator.py), never with them.
        raise SpansShards("a write of orders over several shards")
    (parts[min(parts)] if parts else part(0)).outbox.update(loose)
    return sorted(parts.items())


# Skus per script of a consumer's write: at about 35-65 µs a sku (docs/performance.md),
# half a millisecond to a millisecond of Redis, so that the API's scripts never wait long
# behind a catch-up.
STEP_SKUS: Final = 16
STEP_SEPARATOR: Final = "\x1f"  # between a write's id and a first step's number


# Staged ledger rows larger than this go to a key of their own, SET before the write's
# scripts and named in the staged hash after ROWS_REF: a script's arguments are copied, at
# about 2.5 ms of Redis a megabyte, while a plain SET's large value is read from the socket
# as it arrives, between other clients' commands (a large batch stages tens of megabytes).
ROWS_INLINE_MAX: Final = 64 * 1024
ROWS_REF: Final = b"@"


def encode_ends(offsets: Mapping[str, int]) -> str:
    """A write's offsets, as a write in steps keeps them for a retry (``Snapshot``)."""
    return "\n".join(f"{name}={offset}" for name, offset in offsets.items())


def decode_ends(raw: bytes) -> dict[str, int]:
    lines = raw.decode().split("\n") if raw else []
    return {name: int(offset) for name, _, offset in (line.rpartition("=") for line in lines)}


def write_token(outbox_id: str) -> str:
    """What names a write in steps in Redis (its key of first steps): the random end of its
    outbox id."""
    return outbox_id.partition(STEP_SEPARATOR)[0].rpartition("-")[2]


def steps(
    parts: Sequence[tuple[int, ChangeSet]], step_skus: int = STEP_SKUS
) -> list[tuple[int, ChangeSet, str]]:
    """Each shard's part in scripts of at most ``step_skus`` skus: (shard, change set, step
    of write.lua). The first steps write their skus whole (states, projection, dedupe marks,
    hashes of lines, changes-feed entries, outbox entries); the last writes the rest with
    the offsets and the ledger rows, and only if every first step landed. Parts with orders
    or capacity counts (the API's, which are small) stay whole.

    A write refused, or cut short by a crash, after some first steps landed delays and
    loses nothing: its offsets did not move, so it is folded again, and the events those
    steps applied are then duplicates; the read tells them apart from true duplicates for
    the ledger rows (``Snapshot.unfinished``).
    """
    out: list[tuple[int, ChangeSet, str]] = []
    for shard, part in parts:
        if len(part.skus) <= step_skus or part.puts or part.capacity:
            out.append((shard, part, ""))
            continue
        pieces = [
            ChangeSet(
                skus=part.skus[start : start + step_skus],
                outbox_id=f"{part.outbox_id}{STEP_SEPARATOR}{n}",
                assumed_server=part.assumed_server,
            )
            for n, start in enumerate(range(0, len(part.skus), step_skus), 1)
        ]
        last = pieces[-1]
        last.outbox_id, last.offsets, last.ledger = part.outbox_id, part.offsets, part.ledger
        at = {write.sku: piece for piece in pieces for write in piece.skus}
        for sku, ids in part.marked.items():
            at.get(sku, last).marked[sku] = ids
        for sku, records in part.lines.items():
            at.get(sku, last).lines[sku] = records
        for pair, value in part.changed.items():
            at.get(pair[1], last).changed[pair] = value
        carried = carry_notices(part.outbox, pieces)
        for name, event in part.outbox.items():
            if not name.startswith(_NOTICE):
                at.get(outbox_kind(name)[1], last).outbox[name] = event
            elif name not in carried:  # an order with no line re-planned here
                last.outbox[name] = event
        out += [(shard, piece, "p") for piece in pieces[:-1]]
        out.append((shard, last, f"f{len(pieces) - 1}"))
    return out


class PutExists(Exception):
    """An 'nx' put of the write found its key already there; nothing was written."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def refused_skus(changes: ChangeSet, reply: list[Any]) -> list[str]:
    out = []
    for item in reply:
        if item == REPLACED:
            raise ServerReplaced(
                "the Redis server is not the one the write's assumptions came from"
            )
        if item == DIGEST:
            raise DigestKeyChanged("a shard's digest key is not the one the write's came from")
        if item in (FULL, STEPS):  # counts moved since they were read, or a first step
            return [write.sku for write in changes.skus]  # was refused: read them again
        if isinstance(item, bytes):  # a sku whose marks lack an id taken as applied
            out.append(item.decode())
            continue
        index = int(item)
        if index == 0:
            raise ProjectionMissing("redis holds no projection marker")
        if index < 0:
            raise PutExists(changes.puts[-index - 1][0])
        out.append(changes.skus[index - 1].sku)
    return out


def write_calls(
    parts: Sequence[tuple[int, ChangeSet, str]],
    *,
    layout: keys.Layout,
    group_id: str,
    now_ms: int,
    window_ms: int,
    digest_keys: Sequence[bytes | None],
    offsets: Mapping[str, int] | None = None,
) -> Iterator[tuple[list[str], list[Any]]]:
    """The write script's keys and arguments for each step of each shard's part of a write
    (``steps``) that moves ``offsets``, with each shard's digest key; each made only when
    the caller takes it, so that a step can be sent before the next is made."""
    ends = encode_ends(offsets or {})
    for shard, part, step in parts:
        yield script_arguments(
            part, group_id=group_id, now_ms=now_ms, seen_cutoff_ms=now_ms - window_ms,
            layout=layout, shard=shard, step=step, token=write_token(part.outbox_id), ends=ends,
            digest_key=digest_keys[shard],
        )  # fmt: skip


def skus_to_read_again(
    parts: Sequence[tuple[int, ChangeSet, str]], replies: Sequence[Any]
) -> list[str]:
    """The skus whose version moved in the parts of one write, or [] when every part
    landed. The skus of parts that did land are named too: they are to be read again."""
    conflicts: list[str] = []
    landed: list[str] = []
    for (_, part, _), reply in zip(parts, replies, strict=True):
        found = refused_skus(part, reply)
        if found:
            conflicts += found
        else:
            landed += [write.sku for write in part.skus]
    return conflicts + landed if conflicts else []
