--[[
  Confirm a held reservation: payment succeeded, the hold becomes an order.

  KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
  KEYS[5] events stream
  ARGV[1] reservation id   ARGV[2] payment reference (1..128 printable ASCII)

  Returns {0, reservation id, packed record, replayed (0 | 1)}: a repeat with the same payment
  reference returns the same result. Else {code, detail, '', 0}:
    RESERVATION_NOT_FOUND; INVALID_STATE (detail: 'cancelled', 'expired', or 'confirmed' when
    the reservation was confirmed with another payment reference).
  A hold past its deadline that the sweeper has not reached yet is expired here first (its
  units return), then refused as INVALID_STATE 'expired'.
  The 'confirmed' event carries every field of the ledger's orders row.
]]
local rcall = redis.call
local OK = 0
local RESERVATION_NOT_FOUND = -3
local INVALID_STATE = -11
-- @include release_hold

local rid, ref = ARGV[1], ARGV[2]
if not rid or not ref or #ref < 1 or #ref > 128 then
  return redis.error_reply('ERR confirm: ARGV must be reservation id, payment reference')
end
local packed = rcall('HGET', KEYS[3], rid)
if not packed then return {RESERVATION_NOT_FOUND, rid, '', 0} end
local r = cmsgpack.unpack(packed)
if r[1] == 'confirmed' then
  if r[10] == ref then return {OK, rid, packed, 1} end
  return {INVALID_STATE, 'confirmed', '', 0}
end
if r[1] ~= 'held' then return {INVALID_STATE, r[1], '', 0} end
local now = redis_now()
if now >= r[6] then
  release_hold(rid, r, 'expired', now)
  return {INVALID_STATE, 'expired', '', 0}
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
return {OK, rid, packed, 0}
