"""The Lua scripts of the Redis state adapters (``shared.adapters.state_redis`` lists the keys).

Every operation that touches several keys, or must read and write as one step, is a script:
atomic, and one round trip whatever the batch size. Each comment names the script's KEYS and
ARGV, which its adapter builds in that order; KEYS are always declared so Redis Cluster can
route and check them.
"""

from __future__ import annotations

from typing import Final

#: KEYS[1] lease; ARGV owner, ttl ms. Taking a free lease, or extending our own (a restarted
#: loop with the same owner id), both count as holding it.
LEASE_ACQUIRE: Final = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

#: KEYS[1] lease; ARGV owner, ttl ms. Only the holder may extend: an expired lease stays lost.
LEASE_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: KEYS[1] lease; ARGV owner. Only the holder may release.
LEASE_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS[1] checkpoint hash; ARGV last_updated ms, saved_at ms ('' = server time), run id.
#: Moves forward only: a late or replayed run can never rewind the feed.
CHECKPOINT_ADVANCE: Final = """
local current = tonumber(redis.call('HGET', KEYS[1], 'last_updated'))
local proposed = tonumber(ARGV[1])
if current and current >= proposed then
  return 0
end
local saved_at = ARGV[2]
if saved_at == '' then
  local t = redis.call('TIME')
  saved_at = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
redis.call('HSET', KEYS[1], 'last_updated', ARGV[1], 'saved_at', saved_at, 'run_id', ARGV[3])
return 1
"""

#: KEYS[1] counters hash; ARGV name, increment, name, increment, ...
COUNT: Final = """
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""

#: KEYS inflight keys, then the suppressions hash, then the call's receipt; ARGV[1] ttl ms,
#: ARGV[2] '1' if redelivery, ARGV[3] receipt ttl ms, then per claim i: fingerprint, MATI id
#: ('' when the claim is not to be checked against the suppressions). Returns one character
#: per claim, '1' granted, '0' not, 's' not because its MATI id is suppressed.
#: A first delivery takes a free claim, or one holding a different fingerprint (it is the
#: newer version: it supersedes the queued one); the same fingerprint is someone else's
#: queued message. A redelivery takes a free claim or its own fingerprint's (its forward may
#: have failed and must happen again), never another's: a redelivered message may be older
#: than the version that claimed since, and must not push it aside.
#: A suppressed id is never claimed: the batch may have been judged before the suppression
#: was added, and its claim would supersede the suppression's revocation (``CLAIM_OVER``).
#: The answer is kept under the receipt (a key named by a token unique to the call) and a run
#: that finds it returns it unchanged: a client that resends the call because its reply was
#: lost gets the answer of the run that took the claims, not "someone else's" for its own.
CLAIM: Final = """
local receipt = KEYS[#KEYS]
local suppressed = KEYS[#KEYS - 1]
local answered = redis.call('GET', receipt)
if answered then
  return answered
end
local redelivery = ARGV[2] == '1'
local claimed = {}
for i = 1, #KEYS - 2 do
  local key, fingerprint, mati_id = KEYS[i], ARGV[2 * i + 2], ARGV[2 * i + 3]
  local held = redis.pcall('GET', key)
  local free = type(held) ~= 'string'
  local take
  if redelivery then
    take = free or held == fingerprint
  else
    take = free or held ~= fingerprint
  end
  if mati_id ~= '' and redis.call('HEXISTS', suppressed, mati_id) == 1 then
    claimed[i] = 's'
  elseif take then
    redis.call('SET', key, fingerprint, 'PX', ARGV[1])
    claimed[i] = '1'
  else
    claimed[i] = '0'
  end
end
local answer = table.concat(claimed)
redis.call('SET', receipt, answer, 'PX', ARGV[3])
return answer
"""

#: KEYS inflight keys; ARGV[1] ttl ms, ARGV[1 + i] fingerprint i. Takes every claim, whoever
#: holds it (see ``DestinationState.claim_over``).
CLAIM_OVER: Final = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
end
return #KEYS
"""

#: KEYS inflight keys; ARGV[i] fingerprint i. Compare-and-delete.
RELEASE: Final = """
local released = {}
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    released[i] = 1
  else
    released[i] = 0
  end
end
return released
"""

#: KEYS[2i-1] seen key i, KEYS[2i] inflight key i, then (when their number is odd) the
#: recent-uploads key; ARGV[1] now ms, then per entry: encoded entry, valid_until ms,
#: fingerprint, then (with the recent key) its value and ttl ms. The seen key expires when
#: Sentinel stops matching on the indicator; one already past is removed so the filter uploads
#: it again. The recent key names the batch's ids for ``reconcile``'s grace (ingestion lags).
COMMIT: Final = """
local now = tonumber(ARGV[1])
local stored = 0
if #KEYS % 2 == 1 then
  redis.call('SET', KEYS[#KEYS], ARGV[#ARGV - 1], 'PX', ARGV[#ARGV])
end
for i = 1, math.floor(#KEYS / 2) do
  local seen, inflight = KEYS[2 * i - 1], KEYS[2 * i]
  local encoded, valid_until, fingerprint = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if tonumber(valid_until) > now then
    redis.call('SET', seen, encoded, 'PXAT', valid_until)
    stored = stored + 1
  else
    redis.call('DEL', seen)
  end
  if redis.pcall('GET', inflight) == fingerprint then
    redis.call('DEL', inflight)
  end
end
return stored
"""

#: KEYS[1] circuit hash; ARGV state, reason. ``since`` moves only when the state changes, so
#: it says how long the circuit has been open, by the server's clock every replica shares.
SET_CIRCUIT: Final = """
if redis.call('HGET', KEYS[1], 'state') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'reason', ARGV[2])
  return 0
end
local t = redis.call('TIME')
local since = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2], 'since', since)
return 1
"""

#: KEYS[1] log zset, KEYS[2] pause; ARGV limit, span µs, unique token. Returns µs to wait
#: (0 = granted and recorded). Scores are the server's clock in microseconds.
#: ZADD is the script's first write on purpose: Redis refuses a script's write at maxmemory
#: only until the script has written once, and a trim first (never refused, it frees memory)
#: would let a full Redis grant budget it cannot record, so uploads went on that could never
#: be committed. Counting the window with ZCOUNT instead of trimming first keeps that order.
RATE_ACQUIRE: Final = """
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
  return paused * 1000
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local span = tonumber(ARGV[2])
local cutoff = string.format('%.0f', now - span)
if redis.call('ZCOUNT', KEYS[1], '(' .. cutoff, '+inf') < tonumber(ARGV[1]) then
  local score = string.format('%.0f', now)
  redis.call('ZADD', KEYS[1], score, score .. ':' .. ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  redis.call('PEXPIRE', KEYS[1], math.ceil(span / 1000) + 1000)
  return 0
end
local oldest = redis.call(
  'ZRANGEBYSCORE', KEYS[1], '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return math.max(1, tonumber(oldest[2]) + span - now)
"""

#: KEYS[1] pause; ARGV ms. Never shortens a longer pause another replica already set.
#: Returns the pause now in force, in ms.
RATE_PAUSE: Final = """
local wanted = tonumber(ARGV[1])
local current = redis.call('PTTL', KEYS[1])
if wanted > 0 and current < wanted then
  redis.call('SET', KEYS[1], '429', 'PX', ARGV[1])
  return wanted
end
return math.max(current, 0)
"""

#: KEYS[1] log zset; ARGV span µs. Grants still inside the window by the server's clock.
RATE_IN_WINDOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZCOUNT', KEYS[1], string.format('(%.0f', now - tonumber(ARGV[1])), '+inf')
"""
