-- Apply one batch of sku changes atomically, if no sku changed since it was read.
-- Redis scripts never roll back, so every check comes before the first write.
--
-- Every key is of one shard (atp_service/store/keys.py): one slot of a Redis Cluster.
-- KEYS: 1 due zset, 2 offsets hash, 3 outbox hash, 4 the 'initialized' marker, 5 the staged
--       ledger rows (hash), then n_puts
--       string keys, then n_streams
--       change-stream keys, then per sku: hash key, marks key (the set of the current
--       bucket: atp_service/store/keys.py, ``marks_key``), then n_marked marks keys,
--       then 1 the shard's 'kits' flag, then n_lines skus' hashes of order lines
-- ARGV: 1 n_skus, 2 dedupe window's start ms, 3 now ms, 4 sharded pub/sub channel ('' = none),
--       5 the run_id of the Redis server the writer's assumptions come from, or '' for
--         none: the consumer folds skus it wrote last without reading them again, so it
--         needs the same server (not one restarted from older data, or a promoted
--         replica), none of the event_ids to mark (below) marked yet, and the 'marked'
--         ids (below) marked already. Event ids are passed as their digests
--         (atp_service/store/marks.py),
--       6 n_fields, then the names of the projection fields every sku writes,
--       then n_puts, then per put: mode ('nx' = must not exist yet, 'set', 'del',
--         'h:<field>' = set that field of a hash, 'hdel' = remove the field the value names
--         from a hash, or 'c\31<limit>\31<field>' = add the value to that field of a hash,
--         which must stay within the limit), value,
--       then n_streams, then per stream: stream min id to keep, n entries, skus,
--       then n_offsets, then n_offsets (field, next_offset) pairs,
--       then the outbox entry: write id and its availability events ('' '' = none),
--       then n_ledger, then n_ledger (field, ledger rows) pairs,
--       then n_marked, then per marked key: n ids, event_ids that must be marked already
--       (the consumer took them as applied without reading),
--       then the step: '' (the whole write), 'p' (one of the first steps of a write in
--         steps) or 'f<n>' (the last step, after n first steps), the write's token, and
--         (first steps) the write's offsets as "<field>=<next offset>" lines, and the key
--         the digests were made with,
--       then n_lines, then per hash of order lines: n records, then n (field, record)
--         pairs (merged into the hash: see merge_lines),
--       then per sku: expected version ('' = unchecked), state, due ms ('' = none),
--                     n_fields values (in the order of the names), n_seen, n_own,
--                     event_ids: the last n_own of them events this write made itself (a
--                     re-plan's, their ids new by their time), which no one else can have
--                     marked and no retry looks up: marked, not checked nor kept by steps
-- Returns: {} when applied, {'\31replaced'} when the server is not the one of ARGV[5],
-- {'\31digest'} when the digests were made with a key that is not the shard's,
-- {'\31steps'} when a last step finds that not all its first steps landed,
-- else the 1-based indexes of skus whose version moved or whose marks differ from what
-- the write expects (and the sku names of marked keys that lack an id), or the
-- negated 1-based index of an 'nx' put whose key exists, {'\31capacity'} when a 'c' put
-- would pass its limit, or {0} when the marker is missing
-- or the shard's digest key is missing (Redis lost its data: nothing may be written until
-- `atp rebuild`).
local n = tonumber(ARGV[1])
local cutoff = ARGV[2]
local now = ARGV[3]
local pubsub = ARGV[4]
local verify = ARGV[5] ~= ''
-- Every key name of the shard starts with this: KEYS[1] is '<prefix>due'.
local prefix = string.sub(KEYS[1], 1, -4)

local i = 6
local n_fields = tonumber(ARGV[i]); i = i + 1
local names_at = i; i = i + n_fields
local n_puts = tonumber(ARGV[i]); i = i + 1
local puts_at = i; i = i + 2 * n_puts
local n_streams = tonumber(ARGV[i]); i = i + 1
local streams_at = i
for t = 1, n_streams do
  i = i + 2 + tonumber(ARGV[i + 1])
end
local sku_keys_at = 5 + n_puts + n_streams
local n_offsets = tonumber(ARGV[i]); i = i + 1
local offsets_at = i; i = i + 2 * n_offsets
local outbox_id = ARGV[i]
local outbox_events = ARGV[i + 1]
i = i + 2
local n_ledger = tonumber(ARGV[i]); i = i + 1
local ledger_at = i; i = i + 2 * n_ledger
local n_marked = tonumber(ARGV[i]); i = i + 1
local marked_at = i
for m = 1, n_marked do
  i = i + 1 + tonumber(ARGV[i])
end
local step = ARGV[i]
-- A write in steps keeps what its first steps did under this key until its last step lands
-- (atp_service/store/write_plan.py, ``steps``): their count and the offsets the write ends
-- at, and in '<key>:i' the digests of the events they applied, by which a retry tells
-- those events from true duplicates.
local token = ARGV[i + 1]
local steps_key = prefix .. 'partial:' .. token
local steps_ids = steps_key .. ':i'
local ends = ARGV[i + 2]
local digest_key = ARGV[i + 3]
i = i + 4
local n_lines = tonumber(ARGV[i]); i = i + 1
local lines_at = i
for l = 1, n_lines do
  i = i + 1 + 2 * tonumber(ARGV[i])
end
-- The marks of the window: one set per bucket of keys.MARKS_BUCKET_MS (3.5 days) from the
-- one the window starts in to the current one, '<prefix>e:<bucket>:<sku>'.
local BUCKET_MS = 302400000
local first_bucket = math.floor(tonumber(cutoff) / BUCKET_MS)
local bucket = math.floor(tonumber(now) / BUCKET_MS)
local window_sets = {}  -- the names of those sets but for the sku, built once
for b = first_bucket, bucket do
  window_sets[#window_sets + 1] = prefix .. 'e:' .. b .. ':'
end

-- Phase 1: checks only.
local shard_digest_key = redis.call('GET', prefix .. 'digest')
if redis.call('EXISTS', KEYS[4]) == 0 or not shard_digest_key then
  return {0}
end
if shard_digest_key ~= digest_key then
  return {'\31digest'}
end
if verify and string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') ~= ARGV[5] then
  return {'\31replaced'}
end
if string.sub(step, 1, 1) == 'f' then
  if tonumber(redis.call('HGET', steps_key, 'n') or '0') ~= tonumber(string.sub(step, 2)) then
    return {'\31steps'}
  end
end
for p = 1, n_puts do
  local mode = ARGV[puts_at + 2 * (p - 1)]
  if mode == 'nx' and redis.call('EXISTS', KEYS[5 + p]) == 1 then
    return {-p}
  end
  local limit, field = string.match(mode, '^c\31(%d+)\31(.*)$')
  if limit then
    local count = tonumber(redis.call('HGET', KEYS[5 + p], field) or '0')
    if count + tonumber(ARGV[puts_at + 2 * (p - 1) + 1]) > tonumber(limit) then
      return {'\31capacity'}
    end
  end
end
-- Whether any of ARGV[from .. from + count - 1] is (want_marked false) or is not (true)
-- among the sku's marks in the window; in slices, as Lua's stack holds a few thousand
-- values at most.
local function marks_differ(sku, from, count, want_marked)
  local found = {}
  for start = 0, count - 1, 400 do
    local last = math.min(count - 1, start + 399)
    for _, set in ipairs(window_sets) do
      local hits = redis.call('SMISMEMBER', set .. sku, unpack(ARGV, from + start, from + last))
      for e = 1, #hits do
        if hits[e] == 1 then
          found[start + e] = true
        end
      end
    end
  end
  for e = 1, count do
    if (found[e] == true) ~= want_marked then
      return true
    end
  end
  return false
end

local starts = {}
local conflicts = {}
local versions = {}
for s = 1, n do
  starts[s] = i
  local expected = ARGV[i]
  local current = redis.call('HGET', KEYS[sku_keys_at - 1 + 2 * s], 'v') or '0'
  versions[s] = tonumber(current)
  local j = i + 3 + n_fields
  local n_seen = tonumber(ARGV[j])
  local n_checked = n_seen - tonumber(ARGV[j + 1])
  if expected ~= '' and expected ~= current then
    conflicts[#conflicts + 1] = s
  elseif verify and n_checked > 0
      and marks_differ(string.sub(KEYS[sku_keys_at - 1 + 2 * s], #prefix + 3), j + 2, n_checked, false) then
    conflicts[#conflicts + 1] = s
  end
  i = j + 2 + n_seen
end
local m_at = marked_at
for m = 1, n_marked do
  local count = tonumber(ARGV[m_at])
  -- The sku, out of '<prefix>e:<bucket>:<sku>'.
  local sku = string.match(string.sub(KEYS[sku_keys_at + 2 * n + m], #prefix + 3), '^%d+:(.*)$')
  if marks_differ(sku, m_at + 1, count, true) then
    conflicts[#conflicts + 1] = sku
  end
  m_at = m_at + 1 + count
end
local flag_key_at = sku_keys_at + 2 * n + n_marked + 1
if #conflicts > 0 then
  return conflicts
end

-- Phase 2: writes.
local skus = {}
for s = 1, n do
  local at = starts[s]
  local key = KEYS[sku_keys_at - 1 + 2 * s]
  local seen = KEYS[sku_keys_at + 2 * s]
  local fields = {'v', versions[s] + 1, 's', ARGV[at + 1]}
  for f = 0, n_fields - 1 do
    fields[5 + 2 * f] = ARGV[names_at + f]
    fields[6 + 2 * f] = ARGV[at + 3 + f]
  end
  redis.call('HSET', key, unpack(fields))
  local due = ARGV[at + 2]
  local sku = string.sub(key, #prefix + 3)  -- out of '<prefix>s:<sku>'
  skus[#skus + 1] = sku
  if due == '' then
    redis.call('ZREM', KEYS[1], sku)
  else
    redis.call('ZADD', KEYS[1], due, sku)
  end
  local j = at + 5 + n_fields  -- the first event_id (after n_seen and n_own)
  local n_seen = tonumber(ARGV[j - 2])
  local n_checked = n_seen - tonumber(ARGV[j - 1])
  for start = 0, n_seen - 1, 400 do
    local last = math.min(n_seen, start + 400) - 1
    redis.call('SADD', seen, unpack(ARGV, j + start, j + last))
    if step == 'p' and start < n_checked then
      redis.call('SADD', steps_ids, unpack(ARGV, j + start, j + math.min(last, n_checked - 1)))
    end
  end
  if n_seen > 0 then
    -- Kept a window past the bucket's end: every id at least the window.
    redis.call('PEXPIREAT', seen, (bucket + 1) * BUCKET_MS + (now - cutoff))
  end
end

-- The batch's ledger rows (streams/ledger.py says why they are staged here). A field is
-- "topic\31partition\31first offset", and the rows of a partition start at the offset stored
-- before this write: a stale owner's batch that begins below it (its rows there are
-- duplicates) must not overwrite the rows staged under its first offset. Flushes drop rows
-- below the offset a field names, so fields never overlap. Before the offsets move.
for l = 0, n_ledger - 1 do
  local field = ARGV[ledger_at + 2 * l]
  local first = tonumber(string.sub(field, -20))
  local stored = tonumber(redis.call('HGET', KEYS[2], string.sub(field, 1, -22)) or '-1')
  if stored > first then
    field = string.sub(field, 1, -21) .. string.format('%020d', stored)
  end
  -- Large rows were SET to a key of their own just before this script, named here after
  -- '@' (atp_service/store/write_plan.py says why): kept from now on, and a value this
  -- replaces (the same batch's rows from an attempt that was refused) goes.
  local rows = ARGV[ledger_at + 2 * l + 1]
  if string.sub(rows, 1, 1) == '@' then
    redis.call('PERSIST', string.sub(rows, 2))
  end
  local before = redis.call('HGET', KEYS[5], field)
  if before and string.sub(before, 1, 1) == '@' and before ~= rows then
    redis.call('UNLINK', string.sub(before, 2))
  end
  redis.call('HSET', KEYS[5], field, rows)
end

-- Offsets only move forward: a stale owner of a partition after a rebalance cannot move
-- the stored position back.
for o = 0, n_offsets - 1 do
  local field = ARGV[offsets_at + 2 * o]
  local offset = tonumber(ARGV[offsets_at + 2 * o + 1])
  local current = tonumber(redis.call('HGET', KEYS[2], field) or '-1')
  if offset > current then
    redis.call('HSET', KEYS[2], field, offset)
  end
end

for p = 1, n_puts do
  local mode = ARGV[puts_at + 2 * (p - 1)]
  local value = ARGV[puts_at + 2 * (p - 1) + 1]
  if string.sub(mode, 1, 2) == 'h:' then
    redis.call('HSET', KEYS[5 + p], string.sub(mode, 3), value)
  elseif mode == 'hdel' then
    redis.call('HDEL', KEYS[5 + p], value)
  elseif string.sub(mode, 1, 2) == 'c\31' then
    redis.call('HINCRBY', KEYS[5 + p], string.match(mode, '^c\31%d+\31(.*)$'), value)
    redis.call('PEXPIRE', KEYS[5 + p], 259200000)
  elseif mode == 'del' then
    redis.call('DEL', KEYS[5 + p])
  else
    redis.call('SET', KEYS[5 + p], value)
  end
end

-- The records of a sku's re-planned order lines (streams/backorders.py says what a record
-- holds), ARGV[from .. from + 2 * count - 1] (field, record) pairs. A record comes as if the
-- line had none yet: its plan, then its new conversions. Where it has one, the conversions
-- it holds go between. In slices, as Lua's stack holds a few thousand values at most.
local function merge_lines(key, from, count)
  for start = 0, count - 1, 200 do
    local last = math.min(count - 1, start + 199)
    local names = {}
    for l = start, last do
      names[#names + 1] = ARGV[from + 2 * l]
    end
    local old = redis.call('HMGET', key, unpack(names))
    local kept = {}
    local any = false
    for l = start, last do
      local was = old[l - start + 1]
      local at = was and string.find(was, '\n', 1, true)
      if at then
        kept[l] = string.sub(was, at)
        any = true
      end
    end
    if not any then  -- the usual case: none holds conversions yet
      redis.call('HSET', key, unpack(ARGV, from + 2 * start, from + 2 * last + 1))
    else
      local fields = {}
      for l = start, last do
        local record = ARGV[from + 2 * l + 1]
        if kept[l] then
          local cut = string.find(record, '\n', 1, true)
          if cut then
            record = string.sub(record, 1, cut - 1) .. kept[l] .. string.sub(record, cut)
          else
            record = record .. kept[l]
          end
        end
        fields[#fields + 1] = ARGV[from + 2 * l]
        fields[#fields + 1] = record
      end
      redis.call('HSET', key, unpack(fields))
    end
  end
end
local lines_keys_at = flag_key_at + 1
local at_line = lines_at
for l = 0, n_lines - 1 do
  local count = tonumber(ARGV[at_line])
  merge_lines(KEYS[lines_keys_at + l], at_line + 1, count)
  at_line = at_line + 1 + 2 * count
end

-- Changes feed: one stream per channel, trimmed by age (entry ids are milliseconds). One
-- entry per write holds all its skus, newline-separated.
local at = streams_at
for t = 1, n_streams do
  local min_id = ARGV[at]
  local count = tonumber(ARGV[at + 1])
  local skus_here = {}
  for e = 1, count do
    skus_here[e] = ARGV[at + 1 + e]
  end
  redis.call('XADD', KEYS[5 + n_puts + t], 'MINID', '~', min_id, '*', 's', table.concat(skus_here, '\n'))
  at = at + 2 + count
end

-- Kits whose components were written are due for the sweep, which computes them again
-- (streams/kits.py): counted in the shard's '<prefix>kd', as the kit may be in another
-- shard. The sweep removes a kit's count only if it is still the one it read before
-- reading the components, so a write after that read has the kit computed once more. A
-- component's hash of kits is '<prefix>kh:<sku>'.
if redis.call('EXISTS', KEYS[flag_key_at]) == 1 then
  for s = 1, n do
    for _, kit in ipairs(redis.call('HKEYS', prefix .. 'kh:' .. skus[s])) do
      redis.call('ZINCRBY', prefix .. 'kd', 1, kit)
    end
  end
end

if outbox_id ~= '' then
  redis.call('HSET', KEYS[3], outbox_id, outbox_events)
end

-- '<prefix>partials' names the writes whose first steps landed and last step not (yet):
-- the read script looks among the events they applied (READ_SCRIPT). A write cut short
-- stays there until its key expires, as a later write cut short too may have taken its
-- events as applied, and will not say so again.
if step == 'p' then
  redis.call('HSET', steps_key, 'o', ends)
  redis.call('HINCRBY', steps_key, 'n', 1)
  local ttl = math.max(now - cutoff, 3600000)  -- the dedupe window
  redis.call('PEXPIRE', steps_key, ttl)
  redis.call('PEXPIRE', steps_ids, ttl)
  redis.call('SADD', prefix .. 'partials', token)
elseif step ~= '' then
  -- UNLINK: the set of a write's ids is as large as the write (tens of thousands of ids),
  -- and freeing it here would hold Redis for milliseconds; Redis frees it in the background.
  redis.call('UNLINK', steps_key, steps_ids)
  redis.call('SREM', prefix .. 'partials', token)
end

if pubsub ~= '' and #skus > 0 then
  redis.call('SPUBLISH', pubsub, table.concat(skus, '\n'))
end
return {}
