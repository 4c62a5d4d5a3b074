"""The Lua scripts of the Redis Streams bus (``shared.adapters.redis_streams`` says why).

Each does one step Streams lacks (duplicate detection, a maximum delivery count,
dead-lettering, settling only what the caller still holds) atomically, in one round trip per
batch. Each comment names the script's KEYS and ARGV, which the bus builds in that order; KEYS
are always declared so Redis Cluster can route and check them.
"""

from __future__ import annotations

from typing import Final

#: KEYS[1] stream, KEYS[2], KEYS[3] the two duplicate-detection hashes; ARGV group, window ms
#: (0: no detection), then body, message_id, properties per message.
#: Creates the stream and its group when missing, so a queue published to before its
#: receivers started keeps everything (the group starts at 0, not at $).
#: Duplicate detection by the server's clock: time is cut into slots one window long, and
#: each message id published is noted, with its time, in the hash of its slot's parity. A
#: hash is emptied when a slot of its parity begins, two slots after its last one, so an id
#: stays noted for at least a window; an id is a duplicate when noted less than a window ago.
PUBLISH: Final = """
local stream, group, window = KEYS[1], ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
end
local now, current, previous = 0, nil, nil
if window > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local slot = math.floor(now / window)
  current, previous = KEYS[2 + slot % 2], KEYS[3 - slot % 2]
  if tonumber(redis.call('HGET', current, '')) ~= slot then
    redis.call('UNLINK', current)
    redis.call('HSET', current, '', slot)
  end
  redis.call('PEXPIREAT', current, (slot + 2) * window)
end
local added = 0
for i = 1, (#ARGV - 2) / 3 do
  local a = 3 * i
  local fresh = true
  if window > 0 then
    local id = ARGV[a + 1]
    local noted = redis.call('HGET', current, id) or redis.call('HGET', previous, id)
    fresh = not noted or tonumber(noted) + window <= now
    if fresh then
      redis.call('HSET', current, id, now)
    end
  end
  if fresh then
    redis.call('XADD', stream, '*',
      'body', ARGV[a], 'message_id', ARGV[a + 1], 'properties', ARGV[a + 2])
    added = added + 1
  end
end
return added
"""

#: KEYS[1] stream, KEYS[2] dlq; ARGV group, consumer, min idle ms, count, max delivery count,
#: reason. Takes over the oldest entries whose lock expired (or that were abandoned); an entry
#: now delivered more than the maximum goes to the dead-letter stream instead of to the caller.
#: Returns {{{id, delivery count, fields}, ...}, dead-lettered count}.
#: ``XPENDING … IDLE`` rather than ``XAUTOCLAIM``: the latter examines at most 10 × COUNT
#: pending entries per call, so an expired entry behind a long pending list (a busy uploader)
#: would wait several receives; ``XPENDING … IDLE`` skips the live locks however many there are.
RECLAIM: Final = """
local stream, dlq = KEYS[1], KEYS[2]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local need, max_delivery, reason = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if redis.call('EXISTS', stream) == 0 then
  return {{}, 0}
end
local delivered, dead = {}, 0
local expired = redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', need)
if #expired == 0 then
  return {delivered, dead}
end
local ids, times = {}, {}
for i, p in ipairs(expired) do
  ids[i] = p[1]
  times[p[1]] = p[4] + 1
end
local claimed = {}
for _, entry in ipairs(redis.call('XCLAIM', stream, group, consumer, min_idle, unpack(ids))) do
  if type(entry) == 'table' and type(entry[2]) == 'table' then claimed[entry[1]] = entry[2] end
end
for _, id in ipairs(ids) do
  local fields, count = claimed[id], times[id]
  if fields == nil then
    -- deleted from the stream behind our back: nothing to deliver, forget it
    redis.call('XACK', stream, group, id)
  elseif count > max_delivery then
    local f = {}
    for j = 1, #fields, 2 do f[fields[j]] = fields[j + 1] end
    redis.call('XADD', dlq, '*',
      'body', f['body'] or '', 'message_id', f['message_id'] or id,
      'properties', f['properties'] or '{}', 'reason', reason,
      'description', string.format(
        'delivered %d times, the maximum delivery count is %d', count - 1, max_delivery),
      'delivery_count', count - 1)
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
    dead = dead + 1
  else
    delivered[#delivered + 1] = {id, count, fields}
  end
end
return {delivered, dead}
"""

#: KEYS[1] stream, KEYS[2] dlq; ARGV group, consumer, action, lock ms, reason, description,
#: then entry id, delivery count per delivery. Acts only on entries still pending to this
#: consumer with that delivery count (the lock is ours); returns the 0-based positions of the
#: others, whose lock was lost.
SETTLE: Final = """
local stream, dlq = KEYS[1], KEYS[2]
local group, consumer, action, lock_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lost = {}
local exists = redis.call('EXISTS', stream) == 1
for i = 7, #ARGV, 2 do
  local id, count = ARGV[i], tonumber(ARGV[i + 1])
  local p = nil
  if exists then p = redis.call('XPENDING', stream, group, id, id, 1)[1] end
  if p == nil or p[2] ~= consumer or p[4] ~= count then
    lost[#lost + 1] = (i - 7) / 2
  elseif action == 'complete' then
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
  elseif action == 'abandon' then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'IDLE', lock_ms, 'JUSTID')
  elseif action == 'renew' then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
  elseif action == 'dead_letter' then
    local entry = redis.call('XRANGE', stream, id, id)[1]
    if entry then
      local f = {}
      for j = 1, #entry[2], 2 do f[entry[2][j]] = entry[2][j + 1] end
      redis.call('XADD', dlq, '*',
        'body', f['body'] or '', 'message_id', f['message_id'] or id,
        'properties', f['properties'] or '{}', 'reason', ARGV[5], 'description', ARGV[6],
        'delivery_count', count)
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
    else
      redis.call('XACK', stream, group, id)
      lost[#lost + 1] = (i - 7) / 2
    end
  end
end
return lost
"""

#: KEYS[1] stream; ARGV group, consumer, lowest id, highest id, then (id, delivery count)
#: pairs. ``SETTLE``'s "complete" for a whole chunk in five calls instead of three per entry
#: (the per-entry calls were most of Redis's time in a steady-state filter batch): the
#: consumer's pending entries between the lowest and the highest id are read once, and the
#: entries still ours, at the delivery we hold, are acknowledged and deleted together.
#: Returns the 0-based positions whose lock was lost.
COMPLETE: Final = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local lost, done, held = {}, {}, {}
if redis.call('EXISTS', stream) == 1 then
  local mine = 0
  for _, c in ipairs(redis.call('XPENDING', stream, group)[4] or {}) do
    if c[1] == consumer then mine = tonumber(c[2]) end
  end
  if mine > 0 then
    for _, p in ipairs(redis.call('XPENDING', stream, group, ARGV[3], ARGV[4], mine, consumer)) do
      held[p[1]] = p[4]
    end
  end
end
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  if held[id] ~= nil and held[id] == tonumber(ARGV[i + 1]) then
    done[#done + 1] = id
    held[id] = nil
  else
    lost[#lost + 1] = (i - 5) / 2
  end
end
if #done > 0 then
  redis.call('XACK', stream, group, unpack(done))
  redis.call('XDEL', stream, unpack(done))
end
return lost
"""

#: KEYS[1] stream, KEYS[2] dlq; ARGV group, then dead-letter entry ids. Moves each one that is
#: still there back as a fresh entry (delivery count starts again) and deletes it from the
#: dead-letter stream, in one step, so a replay can never both keep and resend a message.
REPLAY: Final = """
local stream, dlq = KEYS[1], KEYS[2]
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, ARGV[1], '0', 'MKSTREAM')
end
local replayed = 0
for i = 2, #ARGV do
  local entry = redis.call('XRANGE', dlq, ARGV[i], ARGV[i])[1]
  if entry then
    local f = {}
    for j = 1, #entry[2], 2 do f[entry[2][j]] = entry[2][j + 1] end
    redis.call('XADD', stream, '*', 'body', f['body'] or '',
      'message_id', f['message_id'] or ARGV[i], 'properties', f['properties'] or '{}')
    redis.call('XDEL', dlq, ARGV[i])
    replayed = replayed + 1
  end
end
return replayed
"""

#: KEYS[1] stream, KEYS[2] dlq; ARGV group. Returns {length, pending, dead letters, oldest
#: entry id or false, server seconds, server µs}: one consistent snapshot.
COUNTS: Final = """
local stream, dlq = KEYS[1], KEYS[2]
local length, pending, oldest = 0, 0, false
if redis.call('EXISTS', stream) == 1 then
  length = redis.call('XLEN', stream)
  local summary = redis.pcall('XPENDING', stream, ARGV[1])
  if type(summary) == 'table' and summary.err == nil then pending = summary[1] end
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if first then oldest = first[1] end
end
local t = redis.call('TIME')
return {length, pending, redis.call('XLEN', dlq), oldest, t[1], t[2]}
"""

#: KEYS[1] stream; ARGV group, count. The oldest ``count`` entries and, among them, the
#: pending ones ({id, consumer, idle ms, times delivered}): one consistent snapshot.
PEEK: Final = """
local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then
  return {{}, {}}
end
local entries = redis.call('XRANGE', stream, '-', '+', 'COUNT', ARGV[2])
local pending = {}
if #entries > 0 then
  local p = redis.pcall('XPENDING', stream, ARGV[1], '-', entries[#entries][1], ARGV[2])
  if type(p) == 'table' and p.err == nil then pending = p end
end
return {entries, pending}
"""
