--[[
  Expire every hold whose deadline has passed (at most ARGV[1] of them per call): each goes
  from 'held' to 'expired' and its units return, exactly once. Safe to run from many
  processes at once: a hold leaves the zset in the same atomic call that releases it.
  Every due hold is judged first (reads only); then the call's writes follow
  (engine/lua/includes/writes.lua).

  KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
  KEYS[5] events stream  KEYS[6] damaged hash (reservation id -> 'unreadable' | 'malformed')
  KEYS[7] buyers hash (units per identity, device, network: what a hold's buyer signals return)
  ARGV[1] limit, most holds to expire in this call (int, 1..10000)

  Returns {expired, more, damaged id...}: holds expired now; 1 when more past-deadline holds are
  waiting; then the id of each damaged record (one cmsgpack cannot read, or with fields of the
  wrong type or shape) set aside by this call: it leaves the holds zset for the damaged hash and
  counters 'damaged' counts it, so it never stalls the sweep. An id whose record is gone or no
  longer held just leaves the zset.
]]
local rcall = redis.call
-- @include chunked
-- @include records
-- @include writes

local limit = tonumber(ARGV[1])
if not limit or limit < 1 or limit > 10000 then
  return redis.error_reply('ERR expire: ARGV[1] must be a limit in 1..10000')
end
local now = redis_now()
local due = rcall('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, limit + 1)
local rids = {}
for i = 1, math.min(#due, limit) do rids[i] = due[i] end
local entries, known = read_entries(rids)

local out = {0, #due > limit and 1 or 0}
for i = 1, #rids do
  local rid = rids[i]
  local e = entries[rid]
  if e and e.damaged then
    if set_aside(rid, e, known) == 0 then out[#out + 1] = rid end
  elseif e and e.r[1] == 'held' then
    release_hold(rid, e, 'expired', now)
    out[1] = out[1] + 1
  else
    plan_zrem[rid] = true
  end
end
flush()
return out
