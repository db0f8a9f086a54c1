--[[
  Cancel a held reservation: release its units to the tranche and the user's caps.

  KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
  KEYS[5] events stream
  ARGV[1] reservation id

  Returns {0, reservation id, packed record, replayed (0 | 1)}; repeating a cancel returns the
  same result. Else {code, detail, '', 0}: RESERVATION_NOT_FOUND; INVALID_STATE (detail: the
  state, 'confirmed' or 'expired'). A hold past its deadline is expired here, then refused.
]]
local rcall = redis.call
local OK = 0
local RESERVATION_NOT_FOUND = -3
local INVALID_STATE = -11
-- @include release_hold

local rid = ARGV[1]
if not rid then return redis.error_reply('ERR cancel: ARGV must be the reservation id') end
local packed = rcall('HGET', KEYS[3], rid)
if not packed then return {RESERVATION_NOT_FOUND, rid, '', 0} end
local r = cmsgpack.unpack(packed)
if r[1] == 'cancelled' then return {OK, rid, packed, 1} end
if r[1] ~= 'held' then return {INVALID_STATE, r[1], '', 0} end
local now = redis_now()
if now >= r[6] then
  release_hold(rid, r, 'expired', now)
  return {INVALID_STATE, 'expired', '', 0}
end
release_hold(rid, r, 'cancelled', now)
return {OK, rid, cmsgpack.pack(r), 0}
