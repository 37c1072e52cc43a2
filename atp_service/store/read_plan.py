"""The read script (one round trip for a batch's sku states and dedupe marks) and its
calls: ``read_calls`` makes them, ``snapshot_of`` turns their replies into a Snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, NamedTuple

from atp_service.store import keys
from atp_service.store.marks import digests
from atp_service.store.write_plan import decode_ends
from streams.state import SkuState, load_state
from streams.store import Snapshot

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


READ_CHUNK: Final = 64  # skus per script call: bounds the time Redis is busy with one


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


def snapshot_of(replies: Sequence[tuple[ReadCall, list[Any]]]) -> Snapshot:
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
