--[[
  Confirm held reservations: payment succeeded, each hold becomes an order. A batch of requests
  is judged one by one, in order; each request's checks come before its own writes.

  KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
  KEYS[5] events stream
  ARGV[1] n, requests in the batch (int, 1..4096)
  then 2 values per request: reservation id · payment reference (1..128 characters)

  Returns 4 values per request:
    {0, reservation id, packed record, replayed (0 | 1)}: a repeat with the same payment
      reference returns the same result, replayed = 1.
    {code, detail, '', 0}: RESERVATION_NOT_FOUND (detail: the id); INVALID_STATE (detail:
      'cancelled', 'expired', or 'confirmed' when it was confirmed with another reference).
  A hold at or past its deadline that the sweeper has not reached yet is expired here first
  (its units return), then refused as INVALID_STATE 'expired'.
  The 'confirmed' event carries every field of the ledger's orders row.
  Malformed ARGV fails the whole batch with an error reply, before any read or write.
]]
local rcall = redis.call
local OK = 0
local RESERVATION_NOT_FOUND = -3
local INVALID_STATE = -11
local STRIDE = 2
-- @include release_hold

local n = tonumber(ARGV[1])
if not n or n < 1 or n > 4096 or n ~= math.floor(n) or #ARGV ~= 1 + STRIDE * n then
  return redis.error_reply('ERR confirm: ARGV must be n then (reservation id, payment reference) per request')
end
for i = 1, n do
  local ref = ARGV[1 + STRIDE * i]
  if #ref < 1 or #ref > 128 then
    return redis.error_reply('ERR confirm: a payment reference has 1..128 characters')
  end
end

local out = {}
local now = redis_now()

local function reply(code, detail, packed, replayed)
  out[#out + 1] = code; out[#out + 1] = detail; out[#out + 1] = packed; out[#out + 1] = replayed
end

local function confirm(rid, ref)
  local packed = rcall('HGET', KEYS[3], rid)
  if not packed then return reply(RESERVATION_NOT_FOUND, rid, '', 0) end
  local r = cmsgpack.unpack(packed)
  if r[1] == 'confirmed' then
    if r[10] == ref then return reply(OK, rid, packed, 1) end
    return reply(INVALID_STATE, 'confirmed', '', 0)
  end
  if r[1] ~= 'held' then return reply(INVALID_STATE, r[1], '', 0) end
  if now >= r[6] then
    release_hold(rid, r, 'expired', now)
    return reply(INVALID_STATE, 'expired', '', 0)
  end
  local pid, uid, units = r[2], r[3], r[4]
  rcall('HINCRBY', KEYS[1], 'held', -units)
  rcall('HINCRBY', KEYS[1], 'held|' .. pid, -units)
  rcall('HINCRBY', KEYS[1], 'sold', units)
  rcall('HINCRBY', KEYS[1], 'sold|' .. pid, units)
  rcall('HINCRBY', KEYS[1], 'orders', 1)
  if rcall('HINCRBY', KEYS[2], 'c|' .. uid, units) == units then
    rcall('HINCRBY', KEYS[1], 'buyers', 1)  -- this user's first confirmed units in the campaign
  end
  rcall('HINCRBY', KEYS[2], 'c|' .. uid .. '|' .. pid, units)
  rcall('ZREM', KEYS[4], rid)
  r[1] = 'confirmed'; r[10] = ref; r[11] = now
  packed = cmsgpack.pack(r)
  rcall('HSET', KEYS[3], rid, packed)
  rcall('XADD', KEYS[5], '*', 'e', 'confirmed', 'rid', rid, 'pid', pid, 'uid', uid, 'units', units,
    'amount', string.format('%d', r[5]), 'at', now, 'ref', ref)
  reply(OK, rid, packed, 0)
end

for i = 1, n do
  confirm(ARGV[STRIDE * i], ARGV[1 + STRIDE * i])
end
return out
