--[[
  Prune a campaign's rate limiter (GCRA) of the users it no longer needs to remember: a field
  whose theoretical arrival time has passed is one reserve.lua treats exactly as a missing field
  (it starts again from now, a full burst allowed), so deleting it changes no decision. One call
  examines one HSCAN page, so its work is bounded however large the hash; the caller keeps the
  cursor and calls again (cursor '0' again: a full pass is done). Redis TIME is the clock.

  KEYS[1] the campaign's rate limiter hash (fs:{c:ID}:rl): user id -> arrival time (ms)
  ARGV[1] HSCAN cursor ('0' starts a pass)
  ARGV[2] fields to examine in this call (HSCAN COUNT, int 1..10000)

  Returns {next cursor ('0': the pass is over), fields deleted, fields examined}.
]]
local rcall = redis.call

local cursor, count = ARGV[1], tonumber(ARGV[2])
if not string.match(cursor, '^%d+$') or not count or count < 1 or count > 10000 or count ~= math.floor(count) then
  return redis.error_reply('ERR prune_ratelimit: ARGV must be cursor (digits), count (int 1..10000)')
end
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local page = rcall('HSCAN', KEYS[1], cursor, 'COUNT', count)
local fields = page[2]
local stale = {}
for i = 1, #fields, 2 do
  local tat = tonumber(fields[i + 1])
  if tat == nil or tat < now then stale[#stale + 1] = fields[i] end
end
-- HDEL's arguments in chunks: unpack() of a long table overflows Lua's C stack
local CHUNK = 1000
for i = 1, #stale, CHUNK do
  rcall('HDEL', KEYS[1], unpack(stale, i, math.min(i + CHUNK - 1, #stale)))
end
return {page[1], #stale, #fields / 2}
