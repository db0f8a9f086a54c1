-- Included by confirm.lua, cancel.lua and expire.lua (engine/core/scripts.py splices it in).
-- KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
-- KEYS[5] events stream.  r is an unpacked reservation record in state 'held'.

-- Ends the hold of r as `state` ('cancelled' or 'expired'): its units go back to the tranche
-- and to the user's caps, exactly once, because the record leaves 'held' in the same call.
-- Returns the new packed record.
local function release_hold(rid, r, state, now)
  local pid, uid, units = r[2], r[3], r[4]
  rcall('HINCRBY', KEYS[1], 'held', -units)
  rcall('HINCRBY', KEYS[1], 'held|' .. pid, -units)
  rcall('HINCRBY', KEYS[2], 't|' .. uid, -units)
  rcall('HINCRBY', KEYS[2], 't|' .. uid .. '|' .. pid, -units)
  rcall('ZREM', KEYS[4], rid)
  r[1] = state
  local packed = cmsgpack.pack(r)
  rcall('HSET', KEYS[3], rid, packed)
  rcall('XADD', KEYS[5], '*', 'e', state, 'rid', rid, 'pid', pid, 'uid', uid, 'units', units,
    'amount', string.format('%d', r[5]), 'at', now)
  return packed
end

-- Redis TIME in ms: the one clock every API host shares.
local function redis_now()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
