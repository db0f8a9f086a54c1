--[[
  Read a ticket for a poll (engine/admission/waiting.py), and from the opening on note the first
  poll that read it: a token's expiry counts from the later of the ticket's admission and that
  first poll (docs/API.md, "Queue mode"), so a ticket told to come back after the opening never
  finds its turn gone before it could hear of it.

  KEYS[1] tickets hash   KEYS[2] queue zset   KEYS[3] first polls hash (ticket id -> ms)
  ARGV[1] ticket id      ARGV[2] opens_at (ms)

  Returns {record or false, rank (0-based) or false, now ms, first poll ms or false}. Writes only
  for a ticket that exists, once Redis TIME has reached opens_at, and only its first time (HSETNX):
  one field per ticket, as the tickets hash has.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local opens = tonumber(ARGV[2])
if not opens or ARGV[1] == '' then return redis.error_reply('ERR queue_seen: ARGV must be ticket id, opens_at ms') end
local record = rcall('HGET', KEYS[1], ARGV[1])
local rank = rcall('ZRANK', KEYS[2], ARGV[1])
local seen = false
if record and rank and now >= opens then
  rcall('HSETNX', KEYS[3], ARGV[1], now)
  seen = rcall('HGET', KEYS[3], ARGV[1])
end
return {record, rank, now, seen}
