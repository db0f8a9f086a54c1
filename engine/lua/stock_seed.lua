--[[
  Put a bucketed campaign's whole tranche into its central reserve, once (engine/core/buckets.py):
  a reserve that exists already is left as it is, so seeding again after units moved moves none.

  KEYS[1] stock hash (the campaign's central reserve)
  ARGV[1..] field, units pairs: 'all' and 'p|' .. product id (units: int, 0..10^12)

  Returns 1 seeded now, 0 seeded before.
]]
local rcall = redis.call

if #ARGV < 2 or #ARGV % 2 ~= 0 then
  return redis.error_reply('ERR stock_seed: ARGV must be field, units pairs')
end
for i = 1, #ARGV, 2 do
  local f, u = ARGV[i], tonumber(ARGV[i + 1])
  if (f ~= 'all' and (string.sub(f, 1, 2) ~= 'p|' or #f < 3)) or not u or u < 0 or u ~= math.floor(u) then
    return redis.error_reply('ERR stock_seed: a pair is all or p|<product id>, then units')
  end
end
if rcall('EXISTS', KEYS[1]) == 1 then
  return 0
end
rcall('HSET', KEYS[1], unpack(ARGV))
return 1
