--[[
  Cancel held reservations: release each one's units to the tranche and the user's caps. Every
  request of the batch is judged first, in order, against the state the requests before it left
  (reads only); then the batch's writes follow (engine/lua/includes/writes.lua).

  KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
  KEYS[5] events stream  KEYS[6] damaged hash (reservation id -> 'unreadable' | 'malformed')
  KEYS[7] buyers hash (units per identity, device, network: what a hold's buyer signals return)
  ARGV[1] n, requests in the batch (int, 1..4096)
  then 2 values per request: reservation id · the calling storefront's name (non-empty, no '|')

  Returns 4 values per request:
    {0, reservation id, packed record, replayed (0 | 1)}: repeating a cancel returns the same
      result, replayed = 1.
    {code, detail, '', 0}: RESERVATION_NOT_FOUND (detail: the id), also for a reservation another
      storefront made, and then nothing is written; INVALID_STATE (detail: the state,
      'confirmed' or 'expired').
    {DAMAGED_RECORD, reservation id, '', set aside before (0 | 1)}: as confirm.lua says.
  A hold at or past its deadline is expired here (its units return once), then refused.
  Malformed ARGV fails the whole batch with an error reply, before any read or write.
]]
local rcall = redis.call
local OK = 0
local RESERVATION_NOT_FOUND = -3
local INVALID_STATE = -11
local DAMAGED_RECORD = -15
local STRIDE = 2
-- @include chunked
-- @include records
-- @include writes

local n = tonumber(ARGV[1])
if not n or n < 1 or n > 4096 or n ~= math.floor(n) or #ARGV ~= 1 + STRIDE * n then
  return redis.error_reply('ERR cancel: ARGV must be n then (reservation id, storefront) per request')
end
local rids = {}
for i = 1, n do
  local sf = ARGV[STRIDE * i + 1]
  if sf == '' or string.find(sf, '|', 1, true) then
    return redis.error_reply('ERR cancel: a storefront is a non-empty name without |')
  end
  rids[i] = ARGV[STRIDE * i]
end

local out = {}
local now = redis_now()
local entries, known = read_entries(rids)

local function reply(code, detail, packed, replayed)
  out[#out + 1] = code; out[#out + 1] = detail; out[#out + 1] = packed; out[#out + 1] = replayed
end

local function judge(rid, sf)
  local e = entries[rid]
  if not e then return reply(RESERVATION_NOT_FOUND, rid, '', 0) end
  if e.damaged then
    if e.owner and e.owner ~= sf then return reply(RESERVATION_NOT_FOUND, rid, '', 0) end
    return reply(DAMAGED_RECORD, rid, '', set_aside(rid, e, known))
  end
  local r = e.r
  if r[8] ~= sf then return reply(RESERVATION_NOT_FOUND, rid, '', 0) end
  if r[1] == 'cancelled' then return reply(OK, rid, e.packed, 1) end
  if r[1] ~= 'held' then return reply(INVALID_STATE, r[1], '', 0) end
  if now >= r[6] then
    release_hold(rid, e, 'expired', now)
    return reply(INVALID_STATE, 'expired', '', 0)
  end
  release_hold(rid, e, 'cancelled', now)
  reply(OK, rid, e.packed, 0)
end

for i = 1, n do
  judge(rids[i], ARGV[STRIDE * i + 1])
end
flush()
return out
