--[[
  Reserve units for a batch of requests against one campaign: each request is judged on its
  own, in arrival order, against the state the requests before it left.

  KEYS[1] meta hash        KEYS[2] counters hash    KEYS[3] users hash
  KEYS[4] reservations     KEYS[5] idempotency hash KEYS[6] holds zset (score: deadline ms)
  KEYS[7] events stream    KEYS[8] rate ring hash   KEYS[9] rate limiter hash
  ARGV[1] n, requests in the batch (int, 1..4096)
  then 6 values per request i, from ARGV[2 + 6*(i-1)]:
    reservation id to use if one is created · storefront name · Idempotency-Key ·
    user id (no '|') · product id · units (int, 1..10^12)

  Returns 4 values per request:
    {0, reservation id, packed record, replayed (0 new | 1 replay)}   the record is msgpack:
      {state, product, user, units, amount, expires_ms, created_ms, storefront, key, ref, confirmed_ms}
      (a replayed hold past its deadline is shown 'expired'; the sweeper writes it)
    {code < 0, detail, '', 0}   codes in engine/status.py; detail: remaining units
      (INSUFFICIENT_STOCK), units still allowed (USER_CAP_EXCEEDED), ms to wait (RATE_LIMITED),
      the product id (PRODUCT_NOT_FOUND, SOLD_OUT), the stored reservation id
      (RESERVATION_NOT_FOUND: the key points at a record that is gone)
  Malformed ARGV fails the whole batch with an error reply, before any read or write.

  Order of checks: idempotency (a replay returns the first reservation, as it is now; rejections
  are not remembered, so a retry after one is judged afresh), product, rate limit (GCRA; an
  attempt counts even if rejected later; replays do not count), window and state, caps, stock.
  No request writes anything until every request of the batch is judged: the loop below only
  reads and fills tables, and the writes follow it, folded into one call per key.
  Each new reservation appends a 'reserved' event (engine/events.py) that carries its storefront
  and Idempotency-Key, so `flashsale recover` can rebuild the idempotency hash from the ledger.
]]
local rcall = redis.call
local OK = 0
local CAMPAIGN_NOT_FOUND = -1
local PRODUCT_NOT_FOUND = -2
local RESERVATION_NOT_FOUND = -3
local NOT_OPEN = -4
local CLOSED = -5
local PAUSED = -6
local SOLD_OUT = -7
local INSUFFICIENT_STOCK = -8
local USER_CAP_EXCEEDED = -9
local IDEMPOTENCY_KEY_REUSED = -10
local RECOVERING = -13
local RATE_LIMITED = -14
local REJECTION_NAME = {
  [NOT_OPEN] = 'NOT_OPEN', [CLOSED] = 'CLOSED', [PAUSED] = 'PAUSED', [SOLD_OUT] = 'SOLD_OUT',
  [INSUFFICIENT_STOCK] = 'INSUFFICIENT_STOCK', [USER_CAP_EXCEEDED] = 'USER_CAP_EXCEEDED',
  [IDEMPOTENCY_KEY_REUSED] = 'IDEMPOTENCY_KEY_REUSED', [RATE_LIMITED] = 'RATE_LIMITED',
}
local STRIDE = 6
local RING = 120  -- seconds kept in the rate ring
local MAX_UNITS = 1e12

local n = tonumber(ARGV[1])
if not n or n < 1 or n > 4096 or n ~= math.floor(n) or #ARGV ~= 1 + STRIDE * n then
  return redis.error_reply('ERR reserve: ARGV must be n then 6 values per request')
end
for i = 1, n do  -- malformed input fails the whole batch before any write
  local b = 1 + STRIDE * (i - 1)
  local u = tonumber(ARGV[b + 6])
  if not u or u < 1 or u > MAX_UNITS or u ~= math.floor(u) then
    return redis.error_reply('ERR reserve: units must be an integer in 1..10^12')
  end
  if ARGV[b + 1] == '' or string.find(ARGV[b + 4], '|', 1, true) then
    return redis.error_reply('ERR reserve: empty reservation id, or a user id with |')
  end
end

local out = {}
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = rcall('HMGET', KEYS[1], 'opens', 'closes', 'hold', 'price', 'total', 'cap', 'flag',
  'rl_rate', 'rl_burst')
if not m[1] then
  for i = 1, n do
    out[#out + 1] = CAMPAIGN_NOT_FOUND; out[#out + 1] = ''; out[#out + 1] = ''; out[#out + 1] = 0
  end
  return out
end
local opens, closes, hold, price = tonumber(m[1]), tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
local total, ccap, flag = tonumber(m[5]), tonumber(m[6]), m[7]
local emission = 1000 / tonumber(m[8])             -- ms between attempts at the sustained rate
local tolerance = emission * (tonumber(m[9]) - 1)  -- a burst of rl_burst attempts is allowed
local window = OK
if flag == 'recovering' then window = RECOVERING
elseif flag == 'closed' or now >= closes then window = CLOSED
elseif now < opens then window = NOT_OPEN
elseif flag == 'paused' then window = PAUSED end

-- Everything read once per batch, changed in these tables, written once at the end.
local c = rcall('HMGET', KEYS[2], 'sold', 'held')
local csold, cheld = tonumber(c[1]) or 0, tonumber(c[2]) or 0
local products = {}  -- pid -> {total, cap, sold, held, held0} or false (no such product)
local users = {}     -- users hash field -> units taken (held + confirmed)
local users0 = {}
local tats = {}      -- uid -> rate limiter theoretical arrival time (ms)
local rejected = {}  -- code name -> count
local new_res, new_idem, new_holds, events = {}, {}, {}, {}
local taken = 0

local function product(pid)
  local p = products[pid]
  if p == nil then
    local pm = rcall('HMGET', KEYS[1], 'total|' .. pid, 'cap|' .. pid)
    if not pm[1] then products[pid] = false; return false end
    local pc = rcall('HMGET', KEYS[2], 'sold|' .. pid, 'held|' .. pid)
    p = {total = tonumber(pm[1]), cap = tonumber(pm[2]), sold = tonumber(pc[1]) or 0,
      held = tonumber(pc[2]) or 0}
    p.held0 = p.held
    products[pid] = p
  end
  return p
end

local function user_taken(field)
  local v = users[field]
  if v == nil then
    v = tonumber(rcall('HGET', KEYS[3], field)) or 0
    users[field] = v; users0[field] = v
  end
  return v
end

local function reply(code, detail, packed, replayed)
  out[#out + 1] = code; out[#out + 1] = detail; out[#out + 1] = packed; out[#out + 1] = replayed
end

local function reject(code, detail)
  local name = REJECTION_NAME[code]
  if name then rejected[name] = (rejected[name] or 0) + 1 end
  reply(code, detail, '', 0)
end

-- A replay answers with the reservation as it is now; a hold past its deadline reads as expired.
local function replay(prior, pid, uid, units)
  local packed = new_res[prior] or rcall('HGET', KEYS[4], prior)
  if not packed then return reject(RESERVATION_NOT_FOUND, prior) end
  local r = cmsgpack.unpack(packed)
  if r[2] ~= pid or r[3] ~= uid or r[4] ~= units then return reject(IDEMPOTENCY_KEY_REUSED, '') end
  if r[1] == 'held' and now >= r[6] then
    r[1] = 'expired'
    packed = cmsgpack.pack(r)
  end
  reply(OK, prior, packed, 1)
end

local function judge(rid, sf, key, uid, pid, units)
  local ikey = sf .. '|' .. key
  local prior = new_idem[ikey] or rcall('HGET', KEYS[5], ikey)
  if prior then return replay(prior, pid, uid, units) end
  local p = product(pid)
  if not p then return reject(PRODUCT_NOT_FOUND, pid) end
  local tat = tats[uid]
  if tat == nil then tat = tonumber(rcall('HGET', KEYS[9], uid)) or 0 end
  if tat < now then tat = now end
  local wait = tat - now - tolerance
  if wait > 0 then return reject(RATE_LIMITED, math.ceil(wait)) end
  tats[uid] = tat + emission
  if window ~= OK then return reject(window, '') end
  local fu, fup = 't|' .. uid, 't|' .. uid .. '|' .. pid
  local allowed = nil
  if p.cap then allowed = p.cap - user_taken(fup) end
  if ccap then
    local a = ccap - user_taken(fu)
    if allowed == nil or a < allowed then allowed = a end
  end
  if allowed ~= nil and units > allowed then return reject(USER_CAP_EXCEEDED, math.max(allowed, 0)) end
  local remaining = math.min(p.total - p.sold - p.held, total - csold - cheld)
  if remaining <= 0 then return reject(SOLD_OUT, pid) end
  if units > remaining then return reject(INSUFFICIENT_STOCK, remaining) end
  local exp = now + hold
  local amount = units * price
  local packed = cmsgpack.pack({'held', pid, uid, units, amount, exp, now, sf, key, '', 0})
  p.held = p.held + units
  cheld = cheld + units
  users[fu] = user_taken(fu) + units
  users[fup] = user_taken(fup) + units
  new_res[rid] = packed
  new_idem[ikey] = rid
  new_holds[#new_holds + 1] = exp
  new_holds[#new_holds + 1] = rid
  events[#events + 1] = {rid, pid, uid, units, string.format('%d', amount), sf, exp, key}
  taken = taken + units
  reply(OK, rid, packed, 0)
end

for i = 1, n do
  local b = 1 + STRIDE * (i - 1)
  judge(ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], tonumber(ARGV[b + 6]))
end

-- The batch's writes, folded: one call per key (one XADD per new reservation). Calls carry at
-- most CHUNK arguments: unpack() of a longer table overflows Lua's C stack (8000 slots).
local CHUNK = 2000
local function call_chunked(cmd, key, args)
  for i = 1, #args, CHUNK do
    rcall(cmd, key, unpack(args, i, math.min(i + CHUNK - 1, #args)))
  end
end
local function flush_hash(key, tbl)
  local args = {}
  for k, v in pairs(tbl) do args[#args + 1] = k; args[#args + 1] = v end
  call_chunked('HSET', key, args)
end
if taken > 0 then
  local cargs = {'held', cheld}
  for pid, p in pairs(products) do
    if p and p.held ~= p.held0 then cargs[#cargs + 1] = 'held|' .. pid; cargs[#cargs + 1] = p.held end
  end
  call_chunked('HSET', KEYS[2], cargs)
  local changed = {}
  for f, v in pairs(users) do if v ~= users0[f] then changed[f] = v end end
  flush_hash(KEYS[3], changed)
  flush_hash(KEYS[4], new_res)
  flush_hash(KEYS[5], new_idem)
  call_chunked('ZADD', KEYS[6], new_holds)
  for _, e in ipairs(events) do
    rcall('XADD', KEYS[7], '*', 'e', 'reserved', 'rid', e[1], 'pid', e[2], 'uid', e[3],
      'units', e[4], 'amount', e[5], 'at', now, 'sf', e[6], 'exp', e[7], 'key', e[8])
  end
  local sec = math.floor(now / 1000)
  local slot = tostring(sec % RING)
  if tonumber(rcall('HGET', KEYS[8], 's' .. slot)) == sec then
    rcall('HINCRBY', KEYS[8], 'u' .. slot, taken)
  else
    rcall('HSET', KEYS[8], 's' .. slot, sec, 'u' .. slot, taken)
  end
end
flush_hash(KEYS[9], tats)
for name, count in pairs(rejected) do rcall('HINCRBY', KEYS[2], 'rej|' .. name, count) end
return out
