"""The Redis adapter: read sku states and dedupe marks, apply a ChangeSet in scripts of at
most ``skus_per_script`` skus per shard it touches (``split``, ``steps``; streams/shards.py).

Concurrency is optimistic: every sku hash carries a version; a write names the versions it
read and a script refuses its skus (before writing anything) if any moved, e.g. because the
API reserved stock meanwhile. The caller then re-reads and re-folds.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, Final, NamedTuple, TypeVar

import pyarrow as pa
import redis
import redis.asyncio as aredis

from allocation.kits import KitDefinition
from atp_service.orders import (
    StoredOrder,
    backordered_lines,
    current,
    decode_stored,
    encode_result,
)
from atp_service.store import keys
from atp_service.store.capacity import AsyncClaims, Claims
from atp_service.store.keys import SpansShards
from atp_service.store.kit_records import AsyncKitRecords, KitRecords
from atp_service.store.marks import DigestKeyChanged, DigestKeys, digests, new_key
from streams.backorders import line_field, order_of_line
from streams.changeset import (
    ChangeSet,
    decode_outbox,
    encode_outbox,
    order_update_field,
    outbox_kind,
    projection_field,
)
from streams.consumer.options import offset_field
from streams.ledger import parse_staged_field, staged_rows, to_ipc
from streams.state import SkuState, load_state
from streams.store import KitDue, ProjectionMissing, ServerReplaced, Snapshot

T = TypeVar("T")
WRITE_SCRIPT: Final = resources.files("atp_service.store").joinpath("write.lua").read_text()


# One round trip for a whole batch's reads (a pipeline of one command per sku cost more in
# the client than the reads cost Redis). KEYS: per sku its hash. ARGV: the first and the
# last bucket of the dedupe window (keys.MARKS_BUCKET_MS), then per sku the number of
# event_ids to look up, then their digests (atp_service/store/marks.py). Returns per sku
# version and state (false when absent), then the positions (1-based, over all the ids)
# of the ids found among the marks, then those of them that the first steps of an
# unfinished write applied, each with the offsets that write ends at (write.lua: the
# shard's 'partials' names those writes, whose keys hold those offsets and the digests
# they applied; looked up only for ids found, which are rare). Flagged
# no-writes so it runs during a CLIENT PAUSE WRITE and on replicas, like the reads it
# replaces.
READ_SCRIPT: Final = """#!lua flags=no-writes
local out = {}
local found = {}
local unfinished = {}
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
local window_sets = {}  -- per key prefix, the names of the window's sets but for the sku
local partials = {}  -- per key prefix, the unfinished writes: their applied ids, their ends
-- Which of ARGV[from .. from + n - 1] the set holds, in slices (Lua's stack is small).
local function holds(key, from, n, hit)
  for start = 0, n - 1, 400 do
    local got = redis.call('SMISMEMBER', key, unpack(ARGV, from + start, from + math.min(n - 1, start + 399)))
    for e = 1, #got do
      if got[e] == 1 then hit[start + e] = true end
    end
  end
end
local a = 3
local position = 0
for k = 1, #KEYS do
  local got = redis.call('HMGET', KEYS[k], 'v', 's')
  out[#out + 1] = got[1]
  out[#out + 1] = got[2]
  local n = tonumber(ARGV[a])
  if n > 0 then
    local cut = string.find(KEYS[k], '}:', 1, true)
    local prefix = string.sub(KEYS[k], 1, cut + 1)
    local sku = string.sub(KEYS[k], cut + 4)  -- after '}:s:'
    local hit = {}
    local sets = window_sets[prefix]
    if not sets then
      sets = {}
      for b = first, last do sets[#sets + 1] = prefix .. 'e:' .. b .. ':' end
      window_sets[prefix] = sets
    end
    for _, set in ipairs(sets) do
      holds(set .. sku, a + 1, n, hit)
    end
    local any = false
    for e = 1, n do
      if hit[e] then
        found[#found + 1] = position + e
        any = true
      end
    end
    if any then
      local writes = partials[prefix]
      if not writes then
        writes = {}
        for _, token in ipairs(redis.call('SMEMBERS', prefix .. 'partials')) do
          local steps = prefix .. 'partial:' .. token
          local ends = redis.call('HGET', steps, 'o')
          if ends then writes[#writes + 1] = {steps .. ':i', ends} end
        end
        partials[prefix] = writes
      end
      local taken = {}
      for _, write in ipairs(writes) do
        local applied = {}
        holds(write[1], a + 1, n, applied)
        for e = 1, n do
          if hit[e] and applied[e] and not taken[e] then
            taken[e] = true
            unfinished[#unfinished + 1] = position + e
            unfinished[#unfinished + 1] = write[2]
          end
        end
      end
    end
  end
  position = position + n
  a = a + 1 + n
end
out[#out + 1] = found
out[#out + 1] = unfinished
return out
"""
REPLACED: Final = b"\x1freplaced"  # the write script's answer when its server changed
FULL: Final = b"\x1fcapacity"  # ... when a location's count for the day would pass its capacity
STEPS: Final = b"\x1fsteps"  # ... when a last step finds that not all its first steps landed
DIGEST: Final = b"\x1fdigest"  # ... when its digests were made with a key not the shard's
READ_CHUNK: Final = 64  # skus per script call: bounds the time Redis is busy with one


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
        args.append(len(write.seen))
        args += digests(marks_with, write.seen)
    key_list += [layout.marks_key(sku, bucket) for sku in changes.marked]
    key_list.append(layout.kits_flag_key(shard))
    key_list += [layout.lines_key(sku) for sku in changes.lines]
    return key_list, args


# An order's notice in the outbox: this, then the order_id.
_NOTICE: Final = order_update_field("")


def _carry_notices(outbox: Mapping[str, bytes], holders: Iterable[ChangeSet]) -> set[str]:
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
    carried = _carry_notices(changes.outbox, list(parts.values()))
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
        carried = _carry_notices(part.outbox, pieces)
        for name, event in part.outbox.items():
            if not name.startswith(_NOTICE):
                at.get(outbox_kind(name)[1], last).outbox[name] = event
            elif name not in carried:  # an order with no line re-planned here
                last.outbox[name] = event
        out += [(shard, piece, "p") for piece in pieces[:-1]]
        out.append((shard, last, f"f{len(pieces) - 1}"))
    return out


class ReadCall(NamedTuple):
    """One call of the read script: its keys and arguments, the skus it reads and the
    event ids whose digests it looks up, in the order of the arguments."""

    keys: list[str]
    args: list[Any]
    skus: list[str]
    event_ids: list[str]


def read_calls(
    skus: Sequence[str],
    event_ids: Mapping[str, Sequence[str]],
    layout: keys.Layout = keys.SINGLE,
    *,
    digest_keys: Sequence[bytes | None] = (),
    now_ms: int = 0,
    window_ms: int = 0,
) -> Iterator[ReadCall]:
    """The read script's calls, one per READ_CHUNK skus of one shard, looking up the
    ``event_ids`` of shards that have a digest key in the window that ends at ``now_ms``."""
    if layout.shards == 1:
        groups: Iterable[Sequence[str]] = [skus]
    else:
        by_shard: dict[int, list[str]] = {}
        for sku in skus:
            by_shard.setdefault(layout.shard(sku), []).append(sku)
        groups = by_shard.values()
    window = [(now_ms - window_ms) // keys.MARKS_BUCKET_MS, now_ms // keys.MARKS_BUCKET_MS]
    for group in groups:
        key = digest_keys[layout.shard(group[0])] if event_ids and digest_keys else None
        for start in range(0, len(group), READ_CHUNK):
            chunk = list(group[start : start + READ_CHUNK])
            args: list[Any] = list(window)
            looked_up: list[str] = []
            for sku in chunk:
                ids = event_ids.get(sku, ()) if key is not None else ()
                args.append(len(ids))
                if ids:
                    args += digests(key or b"", ids)
                    looked_up += ids
            yield ReadCall([layout.sku_key(sku) for sku in chunk], args, chunk, looked_up)


def _snapshot(replies: Sequence[tuple[ReadCall, list[Any]]]) -> Snapshot:
    states: dict[str, SkuState] = {}
    versions: dict[str, int] = {}
    seen: set[str] = set()
    unfinished: dict[str, dict[str, int]] = {}
    for call, reply in replies:
        for r in range(0, len(reply) - 2, 2):
            sku = call.skus[r // 2]
            version = reply[r]
            versions[sku] = int(version) if version is not None else 0
            states[sku] = load_state(sku, reply[r + 1])
        seen.update(call.event_ids[position - 1] for position in reply[-2])
        pairs = reply[-1]
        for u in range(0, len(pairs), 2):
            unfinished[call.event_ids[pairs[u] - 1]] = decode_ends(pairs[u + 1])
    return Snapshot(states, versions, frozenset(seen), unfinished)


class PutExists(Exception):
    """An 'nx' put of the write found its key already there; nothing was written."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _conflicts(changes: ChangeSet, reply: list[Any]) -> list[str]:
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


def _order(raw: bytes | None) -> StoredOrder | None:
    """An order record, or None: absent, or still being written (a pending record of
    atp_service/sharded_allocator.py, which is not JSON)."""
    return decode_stored(raw) if raw and raw[:1] == b"{" else None


def _line_fields(orders: Iterable[tuple[str, StoredOrder]]) -> dict[str, list[str]]:
    """Per sku, the fields of its hash of lines that may hold what re-plans made of these
    orders' lines: one HMGET per sku (a released order is never planned again)."""
    out: dict[str, list[str]] = {}
    for order_id, order in orders:
        if order.result.status != "released":
            for line in backordered_lines(order):
                out.setdefault(line.sku, []).append(line_field(order_id, line.line_id))
    return out


def _line_records(
    fields: Mapping[str, Sequence[str]], replies: Sequence[Sequence[bytes | None]]
) -> dict[str, bytes]:
    """The line records found (field -> record), from the HMGET replies of ``fields``."""
    return {
        name: record
        for names, found in zip(fields.values(), replies, strict=True)
        for name, record in zip(names, found, strict=True)
        if record is not None
    }


def _lines_of(order_id: str, order: StoredOrder, records: Mapping[str, bytes]) -> dict[str, bytes]:
    """An order's line records (line_id -> record), for ``current``."""
    return {
        line.line_id: records[name]
        for line in backordered_lines(order)
        if (name := line_field(order_id, line.line_id)) in records
    }


def capacity_counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


# Moves the group's offsets (one hash, KEYS[1]) forward only. ARGV: field, offset pairs.
# KEYS: 1 a shard's counts of kits due (``Layout.kits_due_key``). ARGV: (kit, count)
# pairs, each removed only while its count is still the one given: a component written
# since the count was read has the kit computed again.
KITS_COMPUTED_SCRIPT: Final = """
for a = 1, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[a]) or '-1') == tonumber(ARGV[a + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[a])
  end
end
return 0
"""

ADVANCE_SCRIPT: Final = """
for i = 1, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1') then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""


def _raised(replies: list[Any]) -> list[Any]:
    """A pipeline's replies, once none is an error (the first is raised)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _pipelined(
    client: redis.Redis,
    script: Any,
    calls: Sequence[tuple[list[str], list[Any]]],
    sets: Sequence[tuple[str, bytes, int]] = (),
) -> list[Any]:
    """The script's replies to ``calls``, all sent in one pipeline after ``sets`` (key,
    value, ttl ms) (``_replies``)."""
    pipe = client.pipeline(transaction=False)
    for key, value, ttl in sets:
        pipe.set(key, value, px=ttl)
    for key_list, args in calls:
        pipe.evalsha(script.sha, len(key_list), *key_list, *args)
    return _replies(script, calls, pipe.execute(raise_on_error=False), len(sets))


def _replies(
    script: Any, calls: Sequence[tuple[list[str], list[Any]]], answers: list[Any], sets: int
) -> list[Any]:
    """The script's replies among ``answers`` (after those of ``sets`` SETs); an error
    raises. A script is loaded server by server: one that has not seen it yet (restarted,
    or a replica that took over) gets it, and the call, again through the script object."""
    _raised(answers[:sets])
    replies = answers[sets:]
    for i, reply in enumerate(replies):
        if isinstance(reply, redis.exceptions.NoScriptError):
            replies[i] = script(keys=calls[i][0], args=calls[i][1])
    return _raised(replies)


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


def _in_turn(
    client: redis.Redis | redis.RedisCluster,
    script: Any,
    calls: Iterable[tuple[list[str], list[Any]]],
    sets: Sequence[tuple[str, bytes, int]] = (),
) -> list[Any]:
    """``_pipelined``, each call sent as soon as it is made (on a single Redis with at most
    STEPS_IN_FLIGHT unanswered): Redis runs a write's first steps while the arguments of
    the next ones are made and packed, and other clients' commands between them. On one
    connection of a plain client; on a cluster, on one connection per node, each call on
    its first key's node (a call's keys share a slot)."""
    cluster = isinstance(client, redis.RedisCluster)
    nodes = _NodeConnections(client, sys.maxsize if cluster else STEPS_IN_FLIGHT)
    sent: list[tuple[list[str], list[Any]]] = []
    try:
        for key, value, ttl in sets:
            nodes.send(key, ("SET", key, value, "PX", ttl))
        for key_list, args in calls:
            nodes.send(key_list[0], ("EVALSHA", script.sha, len(key_list), *key_list, *args))
            sent.append((key_list, args))
        answers = nodes.answers()
    except BaseException as exc:
        nodes.disconnect()  # replies may be left unread on them
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            nodes.refresh()
        raise
    finally:
        nodes.release()
    moved = [i for i, answer in enumerate(answers) if isinstance(answer, _REDIRECTED)]
    if moved:
        # Sent to a node that no longer serves the slot, so not run: again, in order,
        # through the cluster client, which follows the slot (its steps all moved).
        commands = [("SET", key, value, "PX", ttl) for key, value, ttl in sets]
        commands += [("EVALSHA", script.sha, len(k), *k, *a) for k, a in sent]
        pipe = client.pipeline(transaction=False)
        for i in moved:
            pipe.execute_command(*commands[i])
        for i, answer in zip(moved, pipe.execute(raise_on_error=False), strict=True):
            answers[i] = answer
    return _replies(script, sent, answers, len(sets))


# Calls sent to a single Redis and not answered yet, at most. Redis runs what a client
# pipelined back to back before it turns to other clients, so a write's steps sent all at
# once held it for many steps' time (docs/performance.md); with two, Redis has the next
# step while the consumer makes the one after. Not on a cluster: there the bound cost the
# fold about a fifth and did not shorten the allocations' wait (the steps spread over the
# nodes, and the sharded allocator's own round trips dominate).
STEPS_IN_FLIGHT: Final = 2

# Replies of a cluster node that did not run the command: the slot is served elsewhere now.
_REDIRECTED: Final = (
    redis.exceptions.AskError,  # MovedError is one
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


class _NodeConnections:
    """One connection per node the commands go to, each command sent at once, with at most
    ``in_flight`` of them unanswered on a node; the answers in the order the commands were
    sent (errors as values)."""

    def __init__(self, client: redis.Redis | redis.RedisCluster, in_flight: int) -> None:
        self.client = client
        self.in_flight = in_flight
        self.taken: dict[str, tuple[Any, Any]] = {}  # node -> (pool, connection)
        self.unread: dict[str, collections.deque[int]] = {}  # node -> commands unanswered
        self.out: list[Any] = []

    def send(self, key: str, command: tuple[Any, ...]) -> None:
        client = self.client
        if isinstance(client, redis.RedisCluster):
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            name, pool = node.name, client.get_redis_connection(node).connection_pool
        else:
            name, pool = "", client.connection_pool
        taken = self.taken.get(name)
        if taken is None:
            taken = self.taken[name] = (pool, pool.get_connection())
            self.unread[name] = collections.deque()
        connection = taken[1]
        connection.send_packed_command(connection.pack_command(*command))
        unread = self.unread[name]
        unread.append(len(self.out))
        self.out.append(None)
        while len(unread) > self.in_flight:
            self._read(name)

    def _read(self, name: str) -> None:
        at = self.unread[name].popleft()
        try:
            self.out[at] = self.taken[name][1].read_response()
        except redis.ResponseError as exc:
            self.out[at] = exc

    def answers(self) -> list[Any]:
        for name, unread in self.unread.items():
            while unread:
                self._read(name)
        return self.out

    def disconnect(self) -> None:
        for _, connection in self.taken.values():
            connection.disconnect()

    def refresh(self) -> None:
        """After a node failed: on a cluster, ask who serves what now (it may have been
        replaced), as the client does after its own commands fail; the caller tries again."""
        if isinstance(self.client, redis.RedisCluster):
            try:
                self.client.nodes_manager.initialize()
            except (redis.RedisError, redis.RedisClusterException):
                pass  # no node answers yet: the next command asks again

    def release(self) -> None:
        for pool, connection in self.taken.values():
            pool.release(connection)


def _landed(parts: Sequence[tuple[int, ChangeSet, str]], replies: Sequence[Any]) -> list[str]:
    """The skus whose version moved in the parts of one write, or [] when every part
    landed. The skus of parts that did land are named too: they are to be read again."""
    conflicts: list[str] = []
    landed: list[str] = []
    for (_, part, _), reply in zip(parts, replies, strict=True):
        found = _conflicts(part, reply)
        if found:
            conflicts += found
        else:
            landed += [write.sku for write in part.skus]
    return conflicts + landed if conflicts else []


def _merge_outbox(
    pages: Iterable[Mapping[bytes, bytes]], step_fields: dict[str, set[tuple[int, str]]]
) -> dict[str, bytes]:
    """One write's events are in the outbox of every shard it wrote, under one id, and of
    its first steps (``steps``) under that id and the step's number, which are noted in
    ``step_fields`` (id -> (shard, field)) for ``ack_outbox``."""
    merged: dict[str, bytes] = {}
    for shard, page in enumerate(pages):
        for raw_id, blob in page.items():
            outbox_id, _, step = raw_id.decode().partition(STEP_SEPARATOR)
            if step:
                step_fields.setdefault(outbox_id, set()).add((shard, raw_id.decode()))
            before = merged.get(outbox_id)
            if before is None:
                merged[outbox_id] = blob
            else:
                merged[outbox_id] = encode_outbox(dict(decode_outbox(before) + decode_outbox(blob)))
    return dict(sorted(merged.items()))


def _merge_staged(
    shards: Iterable[Mapping[bytes, bytes]], offsets: Mapping[str, int]
) -> dict[str, bytes]:
    """The staged ledger rows of every shard, those of batches every shard holds (below the
    group's offsets), one value per field."""
    tables: dict[str, list[pa.Table]] = {}
    for staged in shards:
        for raw_name, blob in staged.items():
            name = raw_name.decode()
            tables.setdefault(name, []).append(staged_rows(name, blob))
    out: dict[str, bytes] = {}
    for name, parts in tables.items():
        topic, partition, _ = parse_staged_field(name)
        below = offsets.get(offset_field(topic, partition), -1)
        if any(t.num_rows and t["source_offset"][-1].as_py() >= below for t in parts):
            continue  # a batch not yet written to every shard
        table = pa.concat_tables(parts)
        out[name] = to_ipc(table.sort_by("source_offset") if len(parts) > 1 else table)
    return out


def initialize(client: redis.Redis, layout: keys.Layout, how: str, replace: bool = False) -> None:
    """Mark every shard's projection ``how`` (only where it has none unless ``replace``),
    giving each shard that has no digest key (atp_service/store/marks.py) one."""
    pipe = client.pipeline(transaction=False)
    for shard in range(layout.shards):
        pipe.set(layout.digest_key(shard), new_key(), nx=True)
        pipe.set(layout.marker_key(shard), how, nx=not replace)
    pipe.execute()


class RedisStore:
    """Synchronous adapter, used by the consumer and the command-line tools
    (streams.store.Store). A write is one script per shard it touches (streams/shards.py);
    each is atomic and moves its shard's offsets, and once all landed the group's offsets
    move (with one shard they are the shard's)."""

    # RedisClusterException is no RedisError: the cluster client raises it while no node
    # serves a slot (the consumer waits it out).
    transient_errors: tuple[type[Exception], ...] = (
        redis.RedisError,
        redis.RedisClusterException,
        OSError,
    )

    def __init__(
        self,
        client: redis.Redis,
        group_id: str,
        window_ms: int,
        layout: keys.Layout = keys.SINGLE,
        cluster: bool = False,
        step_skus: int = STEP_SKUS,
    ) -> None:
        self.client = client
        self.group_id = group_id
        self.window_ms = window_ms
        self.layout = layout
        self.cluster = cluster
        self.step_skus = step_skus
        # Outbox fields of first steps, by write id, until the write's events are acknowledged.
        self._step_fields: dict[str, set[tuple[int, str]]] = {}
        self.digest_keys = DigestKeys(layout)
        self._write = client.register_script(WRITE_SCRIPT)
        self._read = client.register_script(READ_SCRIPT)
        self._advance = client.register_script(ADVANCE_SCRIPT)
        self._kits_computed = client.register_script(KITS_COMPUTED_SCRIPT)
        self.kit_records = KitRecords(client, layout)
        self.claims = Claims(client, layout)

    def _shards(self) -> range:
        return range(self.layout.shards)

    def read(
        self, skus: Sequence[str], event_ids: Mapping[str, Sequence[str]] | None = None
    ) -> Snapshot:
        found = self.digest_keys.of(self.client) if event_ids else ()
        calls = list(
            read_calls(
                skus, event_ids or {}, self.layout, digest_keys=found,
                now_ms=time.time_ns() // 1_000_000, window_ms=self.window_ms,
            )
        )  # fmt: skip
        if len(calls) == 1:
            return _snapshot([(calls[0], self._read(keys=calls[0].keys, args=calls[0].args))])
        replies = _pipelined(self.client, self._read, [(c.keys, c.args) for c in calls])
        return _snapshot(list(zip(calls, replies, strict=True)))

    def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        """Apply per shard, in steps (``steps``); returns the skus whose version moved (then
        the parts and steps with none of them were written, and their skus are named too)."""
        if not changes.skus and not changes.offsets:
            return []
        if self.layout.shards > 1 and changes.claims and not self.claims.claim(changes):
            return [write.sku for write in changes.skus]  # counts moved: read them again
        shards = [
            (shard, self._assumed(part, shard)) for shard, part in split(changes, self.layout)
        ]
        parts, rows = self._rows_apart(steps(shards, self.step_skus))
        calls = write_calls(
            parts, layout=self.layout, group_id=self.group_id, now_ms=now_ms,
            window_ms=self.window_ms, offsets=changes.offsets,
            digest_keys=self.digest_keys.of(self.client),
        )  # fmt: skip
        try:
            if len(parts) == 1 and not rows:
                key_list, args = next(calls)
                reply = self._write(keys=key_list, args=args)
                conflicts = _conflicts(parts[0][1], reply)
            else:
                # The rows, then the parts and steps, go together (on a cluster, each on
                # its node's connection, in order). The rows are kept by the script that
                # names them, else expire.
                ttl = max(self.window_ms, 3_600_000)
                sets = [(key, blob, ttl) for key, blob in rows]
                replies = _in_turn(self.client, self._write, calls, sets)
                conflicts = _landed(parts, replies)
        except DigestKeyChanged:
            self.digest_keys.forget()  # the caller reads again, with the shards' keys now
            raise
        if conflicts:
            return conflicts
        for shard, part, step in parts:
            if step == "p" and part.outbox:
                self._step_fields.setdefault(changes.outbox_id, set()).add((shard, part.outbox_id))
        if changes.offsets and self.layout.shards > 1:
            flat = [x for pair in changes.offsets.items() for x in pair]
            self._advance(keys=[self.layout.offsets_key(self.group_id)], args=flat)
        return []

    def _rows_apart(
        self, parts: list[tuple[int, ChangeSet, str]]
    ) -> tuple[list[tuple[int, ChangeSet, str]], list[tuple[str, bytes]]]:
        """The parts with their large staged ledger values replaced by the names of keys
        to SET before them (``ROWS_INLINE_MAX``), and those keys and values."""
        rows: list[tuple[str, bytes]] = []
        out: list[tuple[int, ChangeSet, str]] = []
        for shard, part, step in parts:
            staged = part.ledger.get(shard, {})
            if any(len(blob) > ROWS_INLINE_MAX for blob in staged.values()):
                write_id = write_token(part.outbox_id)
                named: dict[str, bytes] = {}
                for n, (name, blob) in enumerate(staged.items()):
                    if len(blob) > ROWS_INLINE_MAX:
                        key = self.layout.rows_key(shard, write_id, n)
                        rows.append((key, blob))
                        blob = ROWS_REF + key.encode()
                    named[name] = blob
                part = dataclasses.replace(part, ledger={shard: named})  # the caller's is kept
            out.append((shard, part, step))
        return out, rows

    def _with_rows(self, pages: list[dict[bytes, bytes]]) -> list[dict[bytes, bytes]]:
        """Staged hashes' values, those kept under a key of their own read from it."""
        named = [
            (page, name, blob[len(ROWS_REF) :])
            for page in pages
            for name, blob in page.items()
            if blob.startswith(ROWS_REF)
        ]
        if named:
            pipe = self.client.pipeline(transaction=False)
            for _, _, key in named:
                pipe.get(key)
            for (page, name, key), blob in zip(named, pipe.execute(), strict=True):
                if blob is None:  # PERSISTed by the write that staged them: never expected
                    raise LookupError(f"staged ledger rows {name!r}: key {key!r} is missing")
                page[name] = blob
        return pages

    def server_id(self) -> str:
        """The server's run_id, which changes when it restarts or a replica takes over; on a
        cluster, "<node>=<run_id>" of every primary, ";"-separated."""
        if not self.cluster:
            info: dict[str, Any] = self.client.info("server")
            return str(info["run_id"])
        cluster: Any = self.client
        found: dict[str, dict[str, Any]] = cluster.info("server", target_nodes="primaries")
        return ";".join(f"{node}={info['run_id']}" for node, info in sorted(found.items()))

    def _assumed(self, changes: ChangeSet, shard: int) -> ChangeSet:
        """On a cluster, a part names the run_id of the node that holds its shard now (one
        that matches no run_id when the shard moved to a node the write did not assume)."""
        if not self.cluster or not changes.assumed_server:
            return changes
        runs = dict(item.split("=", 1) for item in changes.assumed_server.split(";"))
        cluster: Any = self.client
        node = cluster.get_node_from_key(self.layout.due_key(shard)).name
        # A copy: with one shard the part is the caller's own change set.
        return dataclasses.replace(changes, assumed_server=runs.get(node, "moved"))

    def marker(self) -> str | None:
        """The projection marker, or None when a shard lacks it (lost its data)."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.get(self.layout.marker_key(shard))
        found: list[bytes | None] = pipe.execute()
        if any(value is None for value in found):
            return None
        values = {value.decode() for value in found if value is not None}
        return "rebuilding" if "rebuilding" in values else min(values)

    def set_marker(self, how: str) -> None:
        """Mark every shard (`atp rebuild`: "rebuilding", then "rebuilt")."""
        initialize(self.client, self.layout, how, replace=True)
        self.digest_keys.forget()

    def restore_offsets(self, offsets: Mapping[str, int]) -> None:
        """The group's offsets, and every shard's (it holds every event below them)."""
        names = {self.layout.offsets_key(self.group_id)} | {
            self.layout.shard_offsets_key(shard, self.group_id) for shard in self._shards()
        }
        for name in names:
            self.client.hset(name, mapping=dict(offsets))  # type: ignore[arg-type]

    def mark_initialized(self, how: str) -> None:
        initialize(self.client, self.layout, how)
        self.digest_keys.forget()

    def put_snapshot(self, instance: str, payload: bytes, ttl_s: int = 30) -> None:
        key = keys.consumers_key(self.group_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, instance, payload)
        pipe.expire(key, ttl_s)
        pipe.execute()

    def offsets(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.layout.offsets_key(self.group_id))  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    def due(self, now_ms: int, limit: int) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.zrangebyscore(
                self.layout.due_key(shard), "-inf", now_ms, start=0, num=limit, withscores=True
            )
        found: list[list[tuple[bytes, float]]] = pipe.execute()
        if len(found) == 1:
            return [sku.decode() for sku, _ in found[0]]
        merged = sorted((score, sku) for page in found for sku, score in page)
        return [sku.decode() for _, sku in merged[:limit]]

    def kits(self, skus: Sequence[str]) -> dict[str, KitDefinition]:
        return self.kit_records.of(skus)

    def kits_due(self, limit: int) -> list[KitDue]:
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.zrange(self.layout.kits_due_key(shard), 0, limit - 1, withscores=True)
        found: list[list[tuple[bytes, float]]] = pipe.execute()
        return [
            KitDue(shard, kit.decode(), int(count))
            for shard, page in enumerate(found)
            for kit, count in page
        ]

    def kits_computed(self, entries: Sequence[KitDue]) -> None:
        by_shard: dict[int, list[Any]] = {}
        for entry in entries:
            by_shard.setdefault(entry.shard, []).extend((entry.kit, entry.writes))
        calls = [([self.layout.kits_due_key(s)], args) for s, args in by_shard.items()]
        if calls:
            _pipelined(self.client, self._kits_computed, calls)

    def install_kits(self, configured: Sequence[KitDefinition], now_ms: int) -> int:
        return self.kit_records.install(configured, now_ms)

    def capacity_used(self, day: int) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.layout.capacity_key(day))  # type: ignore[assignment]
        return capacity_counts(raw)

    def outbox(self, limit: int) -> dict[str, bytes]:
        """Waiting writes' events: one HSCAN page of about ``limit`` entries per shard (the
        whole outbox while it is small), sorted oldest first."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.hscan(self.layout.outbox_key(shard), 0, count=max(1, limit // self.layout.shards))
        pages: list[tuple[int, dict[bytes, bytes]]] = pipe.execute()
        return _merge_outbox((page for _, page in pages), self._step_fields)

    def documents(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        pipe = self.client.pipeline(transaction=False)
        for channel, sku in pairs:
            pipe.hget(self.layout.sku_key(sku), projection_field(channel))
        found: list[bytes | None] = pipe.execute()
        return {pair: doc for pair, doc in zip(pairs, found, strict=True) if doc is not None}

    def staged_ledger(self) -> dict[str, bytes]:
        """Ledger rows written with their batch, not yet moved to a ledger file: with several
        shards, those of batches that every shard holds."""
        if self.layout.shards == 1:
            raw: dict[bytes, bytes] = self.client.hgetall(self.layout.staged_key(0))  # type: ignore[assignment]
            return {k.decode(): v for k, v in self._with_rows([raw])[0].items()}
        offsets = self.offsets()
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.hgetall(self.layout.staged_key(shard))
        return _merge_staged(self._with_rows(pipe.execute()), offsets)

    def drop_staged_ledger(self, names: Sequence[str]) -> None:
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            pipe = self.client.pipeline(transaction=False)
            for shard in self._shards():
                pipe.hmget(self.layout.staged_key(shard), chunk)
            found: list[list[bytes | None]] = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for shard, values in zip(self._shards(), found, strict=True):
                for blob in values:
                    if blob is not None and blob.startswith(ROWS_REF):
                        pipe.unlink(blob[len(ROWS_REF) :])
                pipe.hdel(self.layout.staged_key(shard), *chunk)
            pipe.execute()

    def ack_outbox(self, outbox_ids: Sequence[str]) -> int:
        """Forget writes whose events the broker acknowledged, every one."""
        if not outbox_ids:
            return 0
        fields: list[list[str]] = [list(outbox_ids) for _ in self._shards()]
        for outbox_id in outbox_ids:
            for shard, name in self._step_fields.pop(outbox_id, ()):
                fields[shard].append(name)
        pipe = self.client.pipeline(transaction=False)
        for shard in self._shards():
            pipe.hdel(self.layout.outbox_key(shard), *fields[shard])
        return sum(pipe.execute())

    def order_results(self, order_ids: Sequence[str]) -> dict[str, bytes]:
        """The results, as planned now (JSON), of those orders that exist: two round trips
        for any number of orders."""
        if not order_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for order_id in order_ids:
            pipe.get(self.layout.order_key(order_id))
        found: list[bytes | None] = pipe.execute()
        records = {o: _order(raw) for o, raw in zip(order_ids, found, strict=True)}
        stored = {o: order for o, order in records.items() if order is not None}
        fields = _line_fields(stored.items())
        pipe = self.client.pipeline(transaction=False)
        for sku, names in fields.items():
            pipe.hmget(self.layout.lines_key(sku), names)
        lines = _line_records(fields, pipe.execute() if fields else [])
        return {
            o: encode_result(current(order, _lines_of(o, order, lines)).result)
            for o, order in stored.items()
        }


class AsyncRedisStore:
    """The same operations for the API's event loop."""

    def __init__(
        self,
        client: aredis.Redis,
        group_id: str,
        window_ms: int,
        layout: keys.Layout = keys.SINGLE,
        cluster: bool = False,
    ) -> None:
        self.client = client
        self.group_id = group_id
        self.window_ms = window_ms
        self.layout = layout
        self.cluster = cluster
        self.digest_keys = DigestKeys(layout)
        self._write = client.register_script(WRITE_SCRIPT)
        self._read = client.register_script(READ_SCRIPT)
        self.kit_records = AsyncKitRecords(client, layout)
        self.claims = AsyncClaims(client, layout)

    async def read(self, skus: Sequence[str]) -> Snapshot:
        replies = [
            (call, await self._read(keys=call.keys, args=call.args))
            for call in read_calls(skus, {}, self.layout)
        ]
        return _snapshot(replies)

    async def _written(self, write: Callable[[Sequence[bytes | None]], Awaitable[T]]) -> T:
        """``write`` with the shards' digest keys, once more with them read again if a shard
        was rebuilt since they were read (its key changed)."""
        try:
            return await write(await self.digest_keys.of_async(self.client))
        except DigestKeyChanged:
            self.digest_keys.forget()
            return await write(await self.digest_keys.of_async(self.client))

    async def write(self, changes: ChangeSet, now_ms: int) -> list[str]:
        """As RedisStore.write, for an API write of one shard (it moves no offsets): the
        skus whose version moved, or []. A write over several shards goes through
        ``write_each`` (atp_service/sharded_allocator.py)."""
        parts = split(changes, self.layout)
        if len(parts) > 1:
            raise SpansShards("an API write over several shards")
        if self.layout.shards > 1 and changes.claims and not await self.claims.claim(changes):
            return [write.sku for write in changes.skus]  # counts moved: read them again
        ((shard, part),) = parts

        async def attempt(digest_keys: Sequence[bytes | None]) -> list[str]:
            key_list, args = script_arguments(
                part, group_id=self.group_id, now_ms=now_ms,
                seen_cutoff_ms=now_ms - self.window_ms, layout=self.layout, shard=shard,
                digest_key=digest_keys[shard],
            )  # fmt: skip
            return _conflicts(part, await self._write(keys=key_list, args=args))

        return await self._written(attempt)

    async def write_each(self, changes: ChangeSet, now_ms: int) -> list[str]:
        """Write each shard's part on its own (no keys of no shard): the skus of the parts
        refused because a sku moved; every other part landed. Capacity is claimed first:
        when a location would pass it, every sku is named and nothing is written."""
        if self.layout.shards > 1 and changes.claims and not await self.claims.claim(changes):
            return [write.sku for write in changes.skus]
        pending = [(shard, part, "") for shard, part in split(changes, self.layout)]
        moved: list[str] = []

        async def attempt(digest_keys: Sequence[bytes | None]) -> list[str]:
            calls = write_calls(
                pending, layout=self.layout, group_id=self.group_id, now_ms=now_ms,
                window_ms=self.window_ms, digest_keys=digest_keys,
            )  # fmt: skip
            replies = await asyncio.gather(*(self._write(keys=k, args=a) for k, a in calls))
            refused = []  # for their digest key: sent again, with the shards' keys read again
            for sent, reply in zip(list(pending), replies, strict=True):
                try:
                    if _conflicts(sent[1], reply):
                        moved.extend(write.sku for write in sent[1].skus)
                except DigestKeyChanged:
                    refused.append(sent)
            pending[:] = refused
            if refused:
                raise DigestKeyChanged("a shard's digest key is not the one the write's came from")
            return moved

        return await self._written(attempt)

    async def capacity_used(self, day: int) -> dict[str, int]:
        """Location -> units its stock allocations took on that UTC day."""
        raw: dict[bytes, bytes] = await self.client.hgetall(self.layout.capacity_key(day))  # type: ignore[assignment]
        return capacity_counts(raw)

    async def orders(self, order_ids: Sequence[str]) -> list[StoredOrder | None]:
        """The stored orders as planned now (their backorders re-planned since), or None."""
        if not order_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for order_id in order_ids:
            pipe.get(self.layout.order_key(order_id))
        found: list[bytes | None] = await pipe.execute()
        stored = [_order(raw) for raw in found]
        fields = _line_fields(
            (o, order) for o, order in zip(order_ids, stored, strict=True) if order is not None
        )
        if not fields:
            return stored
        pipe = self.client.pipeline(transaction=False)
        for sku, names in fields.items():
            pipe.hmget(self.layout.lines_key(sku), names)
        lines = _line_records(fields, await pipe.execute())
        return [
            current(order, _lines_of(o, order, lines)) if order is not None else None
            for o, order in zip(order_ids, stored, strict=True)
        ]
