--[[
  A stock transfer's first step, on its source (the central reserve or a bucket,
  engine/core/buckets.py): take up to `want` units of every field named off this stock hash and
  record the transfer as in flight. Idempotent by transfer id: a repeated debit returns what the
  first one took and takes nothing more.

  KEYS[1] stock hash  KEYS[2] transfers out hash (transfer id -> n,ms,stock key,xin key,fields)
  ARGV[1] transfer id (non-empty, no ',')
  ARGV[2] the destination's stock hash key  ARGV[3] the destination's transfers in zset key
  ARGV[4] want: the most units to move (int, 1..10^12)
  ARGV[5] least: the fewest worth moving (int, 1..want)
  ARGV[6..] fields moved together, each 'all' or 'p|' .. product id (at least one)

  Returns {n, ms}: n units of each field moved into flight at ms (Redis TIME of this source); a
    repeat returns the first debit's {n, ms}.
    {0, available} when fewer than `least` units are free (the fewest over the fields): nothing
    is written.
  Malformed ARGV fails with an error reply, before any write.
]]
local rcall = redis.call
local MAX_UNITS = 1000000000000

local tid, want, least = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
if #ARGV < 6 or tid == '' or string.find(tid, ',', 1, true) or not want or not least
    or want ~= math.floor(want) or least ~= math.floor(least) or want < 1 or want > MAX_UNITS
    or least < 1 or least > want then
  return redis.error_reply('ERR stock_debit: ARGV must be id, stock key, xin key, want, least, fields...')
end
local fields = {}
for i = 6, #ARGV do
  local f = ARGV[i]
  if f ~= 'all' and (string.sub(f, 1, 2) ~= 'p|' or #f < 3 or string.find(f, ',', 1, true)) then
    return redis.error_reply('ERR stock_debit: a field is all or p|<product id>')
  end
  fields[#fields + 1] = f
end

local seen = rcall('HGET', KEYS[2], tid)
if seen then
  local n, ms = string.match(seen, '^(%d+),(%d+),')
  return {tonumber(n), tonumber(ms)}
end
local n = want
for _, f in ipairs(fields) do
  n = math.min(n, tonumber(rcall('HGET', KEYS[1], f) or '0'))
end
if n < least then
  return {0, n}
end
for _, f in ipairs(fields) do
  rcall('HINCRBY', KEYS[1], f, -n)
end
local t = rcall('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
rcall('HSET', KEYS[2], tid, table.concat({n, ms, ARGV[2], ARGV[3], unpack(fields)}, ','))
return {n, ms}
