--[[
  Create a campaign, or replace one that has not opened yet.

  KEYS[1] meta hash  KEYS[2] counters hash  KEYS[3] users hash  KEYS[4] reservations hash
  KEYS[5] idempotency hash  KEYS[6] holds zset  KEYS[7] rate ring hash  KEYS[8] rate limiter hash
  ARGV[1] definition (canonical JSON, kept for reads)
  ARGV[2] opens_at (ms)  ARGV[3] closes_at (ms)  ARGV[4] hold (ms)  ARGV[5] unit price (minor units)
  ARGV[6] total units of the campaign   ARGV[7] per-user campaign cap (units; 0 = none)
  ARGV[8] rate limit, attempts per user per second   ARGV[9] rate limit burst (attempts)
  ARGV[10] number of products p; then 3 values per product: id, total units, cap (0 = none)

  Returns {0, 1} created, {0, 0} replaced, or {ALREADY_OPEN, state} ('open' or 'closed') when
  the campaign it would replace has opened (by Redis TIME) or been closed.
  Malformed ARGV is an error reply, before any write. The events stream is never touched: a
  campaign that has not opened has no events.
]]
local rcall = redis.call
local OK = 0
local ALREADY_OPEN = -12

local function bad(what) return redis.error_reply('ERR load: ' .. what) end
local nums = {}
for i = 2, 10 do
  nums[i] = tonumber(ARGV[i])
  if not nums[i] or nums[i] < 0 or nums[i] ~= math.floor(nums[i]) then
    return bad('ARGV[' .. i .. '] must be an integer >= 0')
  end
end
local np = nums[10]
if np < 1 or #ARGV ~= 10 + 3 * np then return bad('one or more products, 3 values each') end
if nums[3] <= nums[2] or nums[4] < 1 or nums[5] < 1 or nums[6] < 1 or nums[8] < 1 or nums[9] < 1 then
  return bad('window, hold, price, total and rate limit must be positive')
end
for i = 0, np - 1 do
  local total, cap = tonumber(ARGV[12 + 3 * i]), tonumber(ARGV[13 + 3 * i])
  if ARGV[11 + 3 * i] == '' or not total or total < 1 or not cap or cap < 0 then
    return bad('product ' .. (i + 1) .. ' needs an id, total units >= 1, cap >= 0')
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
for i = 0, np - 1 do
  local pid = ARGV[11 + 3 * i]
  fields[#fields + 1] = 'total|' .. pid; fields[#fields + 1] = ARGV[12 + 3 * i]
  if tonumber(ARGV[13 + 3 * i]) > 0 then
    fields[#fields + 1] = 'cap|' .. pid; fields[#fields + 1] = ARGV[13 + 3 * i]
  end
end
rcall('HSET', KEYS[1], unpack(fields))
rcall('HSET', KEYS[2], 'sold', 0, 'held', 0, 'orders', 0, 'buyers', 0)
return {OK, created}
