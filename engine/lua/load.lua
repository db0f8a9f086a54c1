--[[
  Create a campaign, or replace one that has not opened yet.

  KEYS[1] meta hash  KEYS[2] counters hash  KEYS[3] users hash  KEYS[4] reservations hash
  KEYS[5] idempotency hash  KEYS[6] holds zset  KEYS[7] rate ring hash  KEYS[8] rate limiter hash
  ARGV[1] definition (canonical JSON, kept for reads)
  ARGV[2] opens_at (ms)  ARGV[3] closes_at (ms)  ARGV[4] hold (ms)  ARGV[5] unit price (minor units)
  ARGV[6] total units of the campaign   ARGV[7] per-user campaign cap (units; 0 = none)
  ARGV[8] rate limit, attempts per user per second   ARGV[9] rate limit burst (attempts)
  ARGV[10] number of products p; then 3 values per product: id, total units, cap (0 = none)
  then, optionally (v1.1; absent: none of them), 5 values: identity cap, device cap, network cap
    (units; 0 = none) · eligibility ('anyone' | 'registered') · admission mode ('open' | 'queue').
    The meta hash keeps what reserve.lua checks: 'icap', 'dcap', 'ncap' (only those set),
    'elig' = 'registered', 'queue' = '1' (queue mode).

  Returns {0, 1} created, {0, 0} replaced, or {ALREADY_OPEN, state} ('open' or 'closed') when
  the campaign it would replace has opened (by Redis TIME) or been closed.
  Malformed ARGV is an error reply, before any write, and so is a value out of the bounds
  engine/campaign.py enforces: times 0..253402300799999 (the last ms of 9999), hold 1..7 days,
  price 1..10^9, totals and caps 0..10^12 (totals >= 1), total × price <= 2^53 (every amount stays
  exact), a product's total <= the campaign's, rate limit 1..10^6, 1..64 products.
  The events stream is never touched: a campaign that has not opened has no events.
]]
local rcall = redis.call
local OK = 0
local ALREADY_OPEN = -12

local MAX_TIME_MS = 253402300799999
local MAX_HOLD_MS = 7 * 24 * 3600 * 1000
local MAX_PRICE = 1e9
local MAX_UNITS = 1e12
local MAX_AMOUNT = 9007199254740992  -- 2^53
local MAX_RATE = 1e6
local MAX_PRODUCTS = 64
local CHUNK = 2000  -- arguments per call at most: unpack() of more overflows Lua's C stack

local function bad(what) return redis.error_reply('ERR load: ' .. what) end
local nums = {}
for i = 2, 10 do
  nums[i] = tonumber(ARGV[i])
  if not nums[i] or nums[i] < 0 or nums[i] ~= math.floor(nums[i]) then
    return bad('ARGV[' .. i .. '] must be an integer >= 0')
  end
end
local np = nums[10]
local nv = 10 + 3 * np  -- ARGV values before the optional v1.1 block
if np < 1 or (#ARGV ~= nv and #ARGV ~= nv + 5) then
  return bad('one or more products, 3 values each, then none or 5 values')
end
local v11 = {}
if #ARGV == nv + 5 then
  for i = 1, 3 do
    local cap = tonumber(ARGV[nv + i])
    if not cap or cap < 0 or cap > MAX_UNITS or cap ~= math.floor(cap) then
      return bad('a buyer cap must be an integer in 0..10^12')
    end
    if cap > 0 then v11[#v11 + 1] = ({'icap', 'dcap', 'ncap'})[i]; v11[#v11 + 1] = ARGV[nv + i] end
  end
  local elig, mode = ARGV[nv + 4], ARGV[nv + 5]
  if (elig ~= 'anyone' and elig ~= 'registered') or (mode ~= 'open' and mode ~= 'queue') then
    return bad('eligibility is anyone or registered, admission mode open or queue')
  end
  if elig == 'registered' then v11[#v11 + 1] = 'elig'; v11[#v11 + 1] = 'registered' end
  if mode == 'queue' then v11[#v11 + 1] = 'queue'; v11[#v11 + 1] = '1' end
end
if nums[3] <= nums[2] or nums[4] < 1 or nums[5] < 1 or nums[6] < 1 or nums[8] < 1 or nums[9] < 1 then
  return bad('window, hold, price, total and rate limit must be positive')
end
if np > MAX_PRODUCTS then return bad('at most ' .. MAX_PRODUCTS .. ' products') end
if nums[3] > MAX_TIME_MS or nums[4] > MAX_HOLD_MS or nums[5] > MAX_PRICE or nums[6] > MAX_UNITS
    or nums[7] > MAX_UNITS or nums[8] > MAX_RATE or nums[9] > MAX_RATE then
  return bad('a time, the hold, the price, the total, the cap or the rate limit is out of bounds')
end
if nums[6] * nums[5] > MAX_AMOUNT then return bad('total units × unit price must not exceed 2^53') end
for i = 0, np - 1 do
  local total, cap = tonumber(ARGV[12 + 3 * i]), tonumber(ARGV[13 + 3 * i])
  if ARGV[11 + 3 * i] == '' or not total or total < 1 or total > nums[6] or total ~= math.floor(total)
      or not cap or cap < 0 or cap > MAX_UNITS or cap ~= math.floor(cap) then
    return bad('product ' .. (i + 1) .. ' needs an id, total units in 1..the campaign total, cap >= 0')
  end
end

local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = rcall('HMGET', KEYS[1], 'opens', 'flag')
local created = 1
if old[1] then
  if old[2] == 'closed' then return {ALREADY_OPEN, 'closed'} end
  if now >= tonumber(old[1]) then return {ALREADY_OPEN, 'open'} end
  created = 0
  -- nothing can have been reserved before opening, so a replacement starts from zero
  rcall('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
end
local fields = {'def', ARGV[1], 'opens', ARGV[2], 'closes', ARGV[3], 'hold', ARGV[4],
  'price', ARGV[5], 'total', ARGV[6], 'flag', 'active', 'rl_rate', ARGV[8], 'rl_burst', ARGV[9],
  'products', np}
if nums[7] > 0 then fields[#fields + 1] = 'cap'; fields[#fields + 1] = ARGV[7] end
for i = 1, #v11 do fields[#fields + 1] = v11[i] end
for i = 0, np - 1 do
  local pid = ARGV[11 + 3 * i]
  fields[#fields + 1] = 'total|' .. pid; fields[#fields + 1] = ARGV[12 + 3 * i]
  if tonumber(ARGV[13 + 3 * i]) > 0 then
    fields[#fields + 1] = 'cap|' .. pid; fields[#fields + 1] = ARGV[13 + 3 * i]
  end
end
for i = 1, #fields, CHUNK do
  rcall('HSET', KEYS[1], unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
end
rcall('HSET', KEYS[2], 'sold', 0, 'held', 0, 'orders', 0, 'buyers', 0)
return {OK, created}
