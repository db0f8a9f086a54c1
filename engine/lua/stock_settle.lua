--[[
  A stock transfer's last step, on its source (engine/core/buckets.py): 'clear' forgets a
  transfer its destination has credited; 'undo' puts back the units of one that will never be
  credited (stock_credit.lua answered -1) and forgets it. Idempotent: a transfer already settled
  is left alone.

  KEYS[1] stock hash  KEYS[2] transfers out hash (transfer id -> n,ms,stock key,xin key,fields)
  ARGV[1] transfer id  ARGV[2] 'clear' or 'undo'

  Returns 1 settled now, 0 nothing in flight under that id. Bad ARGV: an error reply.
]]
local rcall = redis.call

local tid, how = ARGV[1], ARGV[2]
if #ARGV ~= 2 or (how ~= 'clear' and how ~= 'undo') then
  return redis.error_reply('ERR stock_settle: ARGV must be id, clear | undo')
end
local rec = rcall('HGET', KEYS[2], tid)
if not rec then
  return 0
end
if how == 'undo' then
  local parts = {}
  for p in string.gmatch(rec, '[^,]+') do parts[#parts + 1] = p end
  for i = 5, #parts do
    rcall('HINCRBY', KEYS[1], parts[i], tonumber(parts[1]))
  end
end
rcall('HDEL', KEYS[2], tid)
return 1
