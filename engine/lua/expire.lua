--[[
  Expire every hold whose deadline has passed (at most ARGV[1] of them per call): each goes
  from 'held' to 'expired' and its units return, exactly once. Safe to run from many
  processes at once: a hold leaves the zset in the same atomic call that releases it.

  KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
  KEYS[5] events stream
  ARGV[1] limit, most holds to expire in this call (int, 1..10000)

  Returns {expired, more}: holds expired now; 1 when more past-deadline holds are waiting.
]]
local rcall = redis.call
-- @include release_hold

local limit = tonumber(ARGV[1])
if not limit or limit < 1 or limit > 10000 then
  return redis.error_reply('ERR expire: ARGV[1] must be a limit in 1..10000')
end
local now = redis_now()
local due = rcall('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, limit + 1)
local expired = 0
for i = 1, math.min(#due, limit) do
  local rid = due[i]
  local packed = rcall('HGET', KEYS[3], rid)
  if packed then
    local r = cmsgpack.unpack(packed)
    if r[1] == 'held' then
      release_hold(rid, r, 'expired', now)
      expired = expired + 1
    else
      rcall('ZREM', KEYS[4], rid)
    end
  else
    rcall('ZREM', KEYS[4], rid)
  end
end
return {expired, #due > limit and 1 or 0}
