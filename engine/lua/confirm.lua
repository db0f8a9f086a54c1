--[[
  Confirm held reservations: payment succeeded, each hold becomes an order. Every request of the
  batch is judged first, in order, against the state the requests before it left (reads only);
  then the batch's writes follow (engine/lua/includes/writes.lua).

  KEYS[1] counters hash  KEYS[2] users hash  KEYS[3] reservations hash  KEYS[4] holds zset
  KEYS[5] events stream  KEYS[6] damaged hash (reservation id -> 'unreadable' | 'malformed')
  KEYS[7] buyers hash (units per identity, device, network: what a hold's buyer signals return)
  ARGV[1] n, requests in the batch (int, 1..4096)
  then 3 values per request: reservation id · the calling storefront's name (non-empty, no '|') ·
    payment reference (1..128 characters)

  Returns 4 values per request:
    {0, reservation id, packed record, replayed (0 | 1)}: a repeat with the same payment
      reference returns the same result, replayed = 1.
    {code, detail, '', 0}: RESERVATION_NOT_FOUND (detail: the id), also for a reservation another
      storefront made, and then nothing is written; INVALID_STATE (detail: 'cancelled',
      'expired', or 'confirmed' when it was confirmed with another reference).
    {DAMAGED_RECORD, reservation id, '', set aside before (0 | 1)}: the stored record cannot be
      read, or its fields have the wrong type or shape. The id leaves the holds zset for the
      damaged hash and counters 'damaged' counts it, once; its units stay counted as they are.
      (A damaged record that still names another storefront is RESERVATION_NOT_FOUND.)
  A hold at or past its deadline that the sweeper has not reached yet is expired here first
  (its units return), then refused as INVALID_STATE 'expired'.
  The 'confirmed' event carries every field of the ledger's orders row. The users hash gets the
  confirmed units per user (c|UID), per product (c|UID|PID) and per storefront (c|UID|PID|SF).
  Malformed ARGV fails the whole batch with an error reply, before any read or write.
]]
local rcall = redis.call
local OK = 0
local RESERVATION_NOT_FOUND = -3
local INVALID_STATE = -11
local DAMAGED_RECORD = -15
local STRIDE = 3
-- @include chunked
-- @include records
-- @include writes

local n = tonumber(ARGV[1])
if not n or n < 1 or n > 4096 or n ~= math.floor(n) or #ARGV ~= 1 + STRIDE * n then
  return redis.error_reply('ERR confirm: ARGV must be n then (reservation id, storefront, payment reference) per request')
end
local rids = {}
for i = 1, n do
  local b = 1 + STRIDE * (i - 1)
  local ref = ARGV[b + 3]
  if #ref < 1 or #ref > 128 then
    return redis.error_reply('ERR confirm: a payment reference has 1..128 characters')
  end
  local sf = ARGV[b + 2]
  if sf == '' or string.find(sf, '|', 1, true) then
    return redis.error_reply('ERR confirm: a storefront is a non-empty name without |')
  end
  rids[i] = ARGV[b + 1]
end

local out = {}
local now = redis_now()
local entries, known = read_entries(rids)

local function reply(code, detail, packed, replayed)
  out[#out + 1] = code; out[#out + 1] = detail; out[#out + 1] = packed; out[#out + 1] = replayed
end

local function confirm_hold(rid, e, ref)
  local r = e.r
  local pid, uid, units = r[2], r[3], r[4]
  local fcp = 'c|' .. uid .. '|' .. pid
  add(plan_counters, 'held', -units); add(plan_counters, 'held|' .. pid, -units)
  add(plan_counters, 'sold', units); add(plan_counters, 'sold|' .. pid, units)
  add(plan_counters, 'orders', 1)
  add(plan_users, 'c|' .. uid, units); add(plan_users, fcp, units); add(plan_users, fcp .. '|' .. r[8], units)
  plan_buyers[uid] = true
  plan_zrem[rid] = true
  r[1] = 'confirmed'; r[10] = ref; r[11] = now
  e.packed = cmsgpack.pack(r)
  plan_records[rid] = e.packed
  event({'e', 'confirmed', 'rid', rid, 'pid', pid, 'uid', uid, 'units', units,
    'amount', fmt('%d', r[5]), 'at', now, 'ref', ref})
end

local function judge(rid, sf, ref)
  local e = entries[rid]
  if not e then return reply(RESERVATION_NOT_FOUND, rid, '', 0) end
  if e.damaged then
    if e.owner and e.owner ~= sf then return reply(RESERVATION_NOT_FOUND, rid, '', 0) end
    return reply(DAMAGED_RECORD, rid, '', set_aside(rid, e, known))
  end
  local r = e.r
  if r[8] ~= sf then return reply(RESERVATION_NOT_FOUND, rid, '', 0) end
  if r[1] == 'confirmed' then
    if r[10] == ref then return reply(OK, rid, e.packed, 1) end
    return reply(INVALID_STATE, 'confirmed', '', 0)
  end
  if r[1] ~= 'held' then return reply(INVALID_STATE, r[1], '', 0) end
  if now >= r[6] then
    release_hold(rid, e, 'expired', now)
    return reply(INVALID_STATE, 'expired', '', 0)
  end
  confirm_hold(rid, e, ref)
  reply(OK, rid, e.packed, 0)
end

for i = 1, n do
  local b = 1 + STRIDE * (i - 1)
  judge(rids[i], ARGV[b + 2], ARGV[b + 3])
end
flush()
return out
