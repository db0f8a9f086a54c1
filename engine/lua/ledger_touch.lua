--[[
  Keep a writer's own in-flight entries from looking abandoned: reset the idle time of each entry
  that is still pending to this consumer, and leave alone every entry another consumer has
  claimed meanwhile (a writer that stalled past the claim time must not take back what another
  writer now holds). The check and the reset are one atomic step, so a claim cannot slip between.

  KEYS[1] the campaign's events stream (fs:{c:ID}:events)
  ARGV[1] the consumer group     ARGV[2] this consumer's name
  ARGV[3..] entry ids this consumer believes it holds

  Returns the number of entries refreshed (those still this consumer's); no delivery is counted.
]]
local rcall = redis.call

if #ARGV < 2 then
  return redis.error_reply('ERR ledger_touch: ARGV must be group, consumer, ids...')
end
local group, me = ARGV[1], ARGV[2]
local mine = {}
for i = 3, #ARGV do
  local p = rcall('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == me then mine[#mine + 1] = ARGV[i] end
end
-- XCLAIM's arguments in chunks: unpack() of a long table overflows Lua's C stack
local CHUNK = 1000
for i = 1, #mine, CHUNK do
  local args = {'XCLAIM', KEYS[1], group, me, 0}
  for j = i, math.min(i + CHUNK - 1, #mine) do args[#args + 1] = mine[j] end
  args[#args + 1] = 'JUSTID'
  rcall(unpack(args))
end
return #mine
