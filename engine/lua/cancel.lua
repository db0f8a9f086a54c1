--[[
  Cancel held reservations: release each one's units to the tranche and the user's caps. A batch
  of requests is judged one by one, in order; each request's checks come before its own writes.

  KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
  KEYS[5] events stream
  ARGV[1] n, requests in the batch (int, 1..4096)   then 1 value per request: reservation id

  Returns 4 values per request:
    {0, reservation id, packed record, replayed (0 | 1)}: repeating a cancel returns the same
      result, replayed = 1.
    {code, detail, '', 0}: RESERVATION_NOT_FOUND (detail: the id); INVALID_STATE (detail: the
      state, 'confirmed' or 'expired').
  A hold at or past its deadline is expired here (its units return once), then refused.
  Malformed ARGV fails the whole batch with an error reply, before any read or write.
]]
local rcall = redis.call
local OK = 0
local RESERVATION_NOT_FOUND = -3
local INVALID_STATE = -11
-- @include release_hold

local n = tonumber(ARGV[1])
if not n or n < 1 or n > 4096 or n ~= math.floor(n) or #ARGV ~= 1 + n then
  return redis.error_reply('ERR cancel: ARGV must be n then one reservation id per request')
end

local out = {}
local now = redis_now()

local function reply(code, detail, packed, replayed)
  out[#out + 1] = code; out[#out + 1] = detail; out[#out + 1] = packed; out[#out + 1] = replayed
end

local function cancel(rid)
  local packed = rcall('HGET', KEYS[3], rid)
  if not packed then return reply(RESERVATION_NOT_FOUND, rid, '', 0) end
  local r = cmsgpack.unpack(packed)
  if r[1] == 'cancelled' then return reply(OK, rid, packed, 1) end
  if r[1] ~= 'held' then return reply(INVALID_STATE, r[1], '', 0) end
  if now >= r[6] then
    release_hold(rid, r, 'expired', now)
    return reply(INVALID_STATE, 'expired', '', 0)
  end
  reply(OK, rid, release_hold(rid, r, 'cancelled', now), 0)
end

for i = 1, n do
  cancel(ARGV[1 + i])
end
return out
