--[[
  Publish how many orders of a campaign the ledger holds, never moving the figure backwards
  (several writers commit and publish in any order; the ledger only ever grows).

  KEYS[1] the campaign's ledger hash (fs:{c:ID}:ledger)
  ARGV[1] persisted orders (count, int >= 0)

  Returns the figure now published (the larger of the old and the new).
]]
local rcall = redis.call

local n = tonumber(ARGV[1])
if not n or n < 0 or n ~= math.floor(n) then
  return redis.error_reply('ERR ledger_progress: ARGV[1] must be a count >= 0')
end
local old = tonumber(rcall('HGET', KEYS[1], 'persisted_orders')) or -1
if n > old then
  rcall('HSET', KEYS[1], 'persisted_orders', n)
  return n
end
return old
