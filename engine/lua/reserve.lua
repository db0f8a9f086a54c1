--[[
  Reserve units for a batch of requests against one campaign: each request is judged on its
  own, in arrival order, against the state the requests before it left.

  KEYS[1] meta hash        KEYS[2] counters hash    KEYS[3] users hash
  KEYS[4] reservations     KEYS[5] idempotency hash KEYS[6] holds zset (score: deadline ms)
  KEYS[7] events stream    KEYS[8] rate ring hash   KEYS[9] rate limiter hash
  ARGV[1] n, requests in the batch (int, 1..4096)
  then 6 values per request i, from ARGV[2 + 6*(i-1)]:
    reservation id to use if one is created · storefront name · Idempotency-Key ·
    user id · product id · units (int > 0)

  Returns 4 values per request:
    {0, reservation id, packed record, replayed (0 new | 1 replay)}   the record is msgpack:
      {state, product, user, units, amount, expires_ms, created_ms, storefront, key, ref, confirmed_ms}
    {code < 0, detail, '', 0}   codes in engine/status.py; detail: remaining units
      (INSUFFICIENT_STOCK), units still allowed (USER_CAP_EXCEEDED), ms to wait (RATE_LIMITED)

  Order of checks: idempotency (a replay returns the first reservation, as it is now), product,
  rate limit (an attempt counts even if rejected later), window and state, caps, stock. All checks
  of a request come before its writes; writes of the batch are folded into one call per key.
]]
local rcall = redis.call
local OK = 0
local CAMPAIGN_NOT_FOUND = -1
local PRODUCT_NOT_FOUND = -2
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

local n = tonumber(ARGV[1])
if not n or n < 1 or n > 4096 or #ARGV ~= 1 + STRIDE * n then
  return redis.error_reply('ERR reserve: ARGV must be n then 6 values per request')
end
for i = 1, n do  -- malformed input fails the whole batch before any write
  local u = tonumber(ARGV[1 + STRIDE * i])
  if not u or u < 1 or u ~= math.floor(u) then
    return redis.error_reply('ERR reserve: units must be an integer > 0')
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
local products = {}  -- pid -> {total, cap, sold, held, held0}
local users = {}     -- users hash field -> units taken (held + confirmed)
local users0 = {}
local tats = {}      -- uid -> rate limiter theoretical arrival time (ms)
local rejected = {}  -- code name -> count
local new_res, new_idem, new_holds = {}, {}, {}
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

local function reject(code, detail)
  local name = REJECTION_NAME[code]
  if name then rejected[name] = (rejected[name] or 0) + 1 end
  out[#out + 1] = code; out[#out + 1] = detail; out[#out + 1] = ''; out[#out + 1] = 0
end

for i = 1, n do
  local b = 1 + STRIDE * (i - 1)
  local rid, sf, key, uid, pid = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local units = tonumber(ARGV[b + 6])
  local ikey = sf .. '|' .. key
  local prior = new_idem[ikey] or rcall('HGET', KEYS[5], ikey)
  if prior then
    local packed = new_res[prior] or rcall('HGET', KEYS[4], prior)
    local r = cmsgpack.unpack(packed)
    if r[2] == pid and r[3] == uid and r[4] == units then
      out[#out + 1] = OK; out[#out + 1] = prior; out[#out + 1] = packed; out[#out + 1] = 1
    else
      reject(IDEMPOTENCY_KEY_REUSED, '')
    end
  else
    local p = product(pid)
    if not p then
      reject(PRODUCT_NOT_FOUND, pid)
    else
      local tat = tats[uid]
      if tat == nil then tat = tonumber(rcall('HGET', KEYS[9], uid)) or 0 end
      if tat < now then tat = now end
      local wait = tat - now - tolerance
      if wait > 0 then
        tats[uid] = tat
        reject(RATE_LIMITED, math.ceil(wait))
      else
        tats[uid] = tat + emission
        if window ~= OK then
          reject(window, '')
        else
          local fu, fup = 't|' .. uid, 't|' .. uid .. '|' .. pid
          local allowed = nil
          if p.cap then allowed = p.cap - user_taken(fup) end
          if ccap then
            local a = ccap - user_taken(fu)
            if allowed == nil or a < allowed then allowed = a end
          end
          local remaining = math.min(p.total - p.sold - p.held, total - csold - cheld)
          if allowed ~= nil and units > allowed then
            reject(USER_CAP_EXCEEDED, math.max(allowed, 0))
          elseif remaining <= 0 then
            reject(SOLD_OUT, pid)
          elseif units > remaining then
            reject(INSUFFICIENT_STOCK, remaining)
          else
            local exp = now + hold
            local packed = cmsgpack.pack({'held', pid, uid, units, units * price, exp, now, sf, key,
              '', 0})
            p.held = p.held + units
            cheld = cheld + units
            users[fu] = user_taken(fu) + units
            users[fup] = user_taken(fup) + units
            new_res[rid] = packed
            new_idem[ikey] = rid
            new_holds[#new_holds + 1] = exp
            new_holds[#new_holds + 1] = rid
            taken = taken + units
            rcall('XADD', KEYS[7], '*', 'e', 'reserved', 'rid', rid, 'pid', pid, 'uid', uid,
              'units', units, 'amount', string.format('%d', units * price), 'at', now, 'sf', sf,
              'exp', exp)
            out[#out + 1] = OK; out[#out + 1] = rid; out[#out + 1] = packed; out[#out + 1] = 0
          end
        end
      end
    end
  end
end

-- The batch's writes, folded: one call per key.
local function flush_hash(key, t)
  local args = {}
  for k, v in pairs(t) do args[#args + 1] = k; args[#args + 1] = v end
  if #args > 0 then rcall('HSET', key, unpack(args)) end
end
if taken > 0 then
  local cargs = {'held', cheld}
  for pid, p in pairs(products) do
    if p and p.held ~= p.held0 then cargs[#cargs + 1] = 'held|' .. pid; cargs[#cargs + 1] = p.held end
  end
  rcall('HSET', KEYS[2], unpack(cargs))
  local changed = {}
  for f, v in pairs(users) do if v ~= users0[f] then changed[f] = v end end
  flush_hash(KEYS[3], changed)
  flush_hash(KEYS[4], new_res)
  flush_hash(KEYS[5], new_idem)
  rcall('ZADD', KEYS[6], unpack(new_holds))
  local sec = math.floor(now / 1000)
  local slot = tostring(sec % RING)
  if tonumber(rcall('HGET', KEYS[8], 's' .. slot)) == sec then
    rcall('HINCRBY', KEYS[8], 'u' .. slot, taken)
  else
    rcall('HSET', KEYS[8], 's' .. slot, sec, 'u' .. slot, taken)
  end
end
local tat_args = {}
for uid, tat in pairs(tats) do tat_args[#tat_args + 1] = uid; tat_args[#tat_args + 1] = tat end
if #tat_args > 0 then rcall('HSET', KEYS[9], unpack(tat_args)) end
for name, count in pairs(rejected) do rcall('HINCRBY', KEYS[2], 'rej|' .. name, count) end
return out
