"""Location capacity counts with several shards (contract section 11).

On one shard the day's counts are written by the same script as the reservations they
count (write.lua, the 'c' puts). With several shards the counts are a key of no shard, so a
write that takes stock at a location with a capacity first claims it here, per reservation
(``ChangeSet.claims``), then writes its skus' parts:

- a claim names its reservation, so a claim made again (a write refused and folded again,
  a consumer that crashed and folds the batch again) counts once, and a claim made again
  with other units counts the difference;
- a claim that would pass a location's capacity is refused whole, and the writer plans
  again on the counts read again, as the write script's refusal does on one shard;
- an allocation that was never made gives its claims back (atp_service/sharded_allocator.py);
  a release gives nothing back, as on one shard.

A claim whose reservation a write refused and then planned otherwise (at another location)
stays counted for the day: the location is passed over early, never past its capacity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import redis
import redis.asyncio as aredis

from atp_service.store import keys
from streams.changeset import ChangeSet

TTL_MS: Final = 3 * 86_400_000  # as write.lua keeps the day's counts

# KEYS: 1 the day's counts, 2 the day's claims. ARGV: 1 ttl ms, then per claim its name,
# location, units and the location's capacity. Returns 1 when every claim is counted, 0
# when one would pass its location's capacity (then none is).
_CLAIM: Final = """
local add, limits, order = {}, {}, {}
local function count(location, units, limit)
  if not add[location] then
    add[location] = 0
    order[#order + 1] = location
  end
  add[location] = add[location] + units
  if limit then
    limits[location] = tonumber(limit)
  end
end
for a = 2, #ARGV, 4 do
  local was = redis.call('HGET', KEYS[2], ARGV[a])
  local units = tonumber(ARGV[a + 2])
  local mine = ARGV[a + 1] .. '\\31' .. units
  if was ~= mine then
    if was then
      local location, before = string.match(was, '^(.*)\\31(%d+)$')
      count(location, -tonumber(before))
    end
    count(ARGV[a + 1], units, ARGV[a + 3])
  end
end
for _, location in ipairs(order) do
  local now = tonumber(redis.call('HGET', KEYS[1], location) or '0')
  if add[location] > 0 and limits[location] and now + add[location] > limits[location] then
    return 0
  end
end
if #order == 0 then
  return 1
end
for a = 2, #ARGV, 4 do
  redis.call('HSET', KEYS[2], ARGV[a], ARGV[a + 1] .. '\\31' .. ARGV[a + 2])
end
for _, location in ipairs(order) do
  if add[location] ~= 0 then
    redis.call('HINCRBY', KEYS[1], location, add[location])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: 1 the day's counts, 2 the day's claims. ARGV: names of claims whose reservations
# were never made: each one's units come off its location's count, once.
_GIVE_BACK: Final = """
for a = 1, #ARGV do
  local was = redis.call('HGET', KEYS[2], ARGV[a])
  if was then
    local location, units = string.match(was, '^(.*)\\31(%d+)$')
    redis.call('HINCRBY', KEYS[1], location, -tonumber(units))
    redis.call('HDEL', KEYS[2], ARGV[a])
  end
end
return 0
"""


def claim_call(layout: keys.Layout, changes: ChangeSet) -> tuple[list[str], list[Any]]:
    day = changes.capacity_day
    args: list[Any] = [TTL_MS]
    for name, (location, units, limit) in sorted(changes.claims.items()):
        args += [name, location, units, limit]
    return [layout.capacity_key(day), layout.capacity_claims_key(day)], args


def give_back_calls(
    layout: keys.Layout, names: Iterable[str], days: Sequence[int]
) -> list[tuple[list[str], list[Any]]]:
    """Per day (a claim is looked for in each), its call; none when there is no name."""
    found = sorted(set(names))
    if not found:
        return []
    return [([layout.capacity_key(d), layout.capacity_claims_key(d)], found) for d in days]


class Claims:
    """Synchronous, for the consumer."""

    def __init__(self, client: redis.Redis, layout: keys.Layout) -> None:
        self.layout = layout
        self._claim = client.register_script(_CLAIM)

    def claim(self, changes: ChangeSet) -> bool:
        """Count ``changes.claims``; False when a location would pass its capacity."""
        key_list, args = claim_call(self.layout, changes)
        return bool(int(self._claim(keys=key_list, args=args)))


class AsyncClaims:
    """The same for the API, which also gives claims back."""

    def __init__(self, client: aredis.Redis, layout: keys.Layout) -> None:
        self.layout = layout
        self._claim = client.register_script(_CLAIM)
        self._give_back = client.register_script(_GIVE_BACK)

    async def claim(self, changes: ChangeSet) -> bool:
        key_list, args = claim_call(self.layout, changes)
        return bool(int(await self._claim(keys=key_list, args=args)))

    async def give_back(self, names: Iterable[str], days: Sequence[int]) -> None:
        for key_list, args in give_back_calls(self.layout, names, days):
            await self._give_back(keys=key_list, args=args)


def capacity_counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    """A day's counts as Redis returns them: location -> units given."""
    return {k.decode(): int(v) for k, v in raw.items()}
