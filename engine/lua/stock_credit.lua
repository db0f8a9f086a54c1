--[[
  A stock transfer's second step, on its destination: add the units the debit took, once per
  transfer id (engine/core/buckets.py). A transfer id credited here is kept TRANSFER_KEEP_MS
  (engine/keys.py), so a repeated credit adds nothing; a transfer older than TRANSFER_CREDIT_MS
  is never credited (its source undoes it instead, stock_settle.lua), so no late repeat can add
  units after its markers are pruned.

  KEYS[1] stock hash  KEYS[2] transfers in zset (transfer id scored by its debit's ms)
  ARGV[1] transfer id  ARGV[2] n, units (int, 1..10^12)  ARGV[3] the debit's ms (int)
  ARGV[4] TRANSFER_CREDIT_MS  ARGV[5] TRANSFER_KEEP_MS
  ARGV[6..] fields, each 'all' or 'p|' .. product id (at least one)

  Returns 0 credited now, 1 credited before (nothing written), -1 too old to credit (nothing
  written: undo it on the source). Malformed ARGV fails with an error reply, before any write.
]]
local rcall = redis.call
local MAX_UNITS = 1000000000000

local tid, n, ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local horizon, keep = tonumber(ARGV[4]), tonumber(ARGV[5])
if #ARGV < 6 or tid == '' or not n or not ms or not horizon or not keep or n < 1 or n > MAX_UNITS
    or n ~= math.floor(n) or horizon < 0 or keep < horizon then
  return redis.error_reply('ERR stock_credit: ARGV must be id, n, ms, credit ms, keep ms, fields...')
end
for i = 6, #ARGV do
  local f = ARGV[i]
  if f ~= 'all' and (string.sub(f, 1, 2) ~= 'p|' or #f < 3) then
    return redis.error_reply('ERR stock_credit: a field is all or p|<product id>')
  end
end

local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
rcall('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - keep))
if rcall('ZSCORE', KEYS[2], tid) then
  return 1
end
if now - ms > horizon then
  return -1
end
rcall('ZADD', KEYS[2], ms, tid)
for i = 6, #ARGV do
  rcall('HINCRBY', KEYS[1], ARGV[i], n)
end
return 0
