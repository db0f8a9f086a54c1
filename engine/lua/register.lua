--[[
  Pre-register users for a campaign: one row from the API, or a batch of rows from an import.

  KEYS[1] campaign meta hash   KEYS[2] registrations hash
  ARGV[1] definition fingerprint (hex SHA-1 of the stored definition, as the caller read it)
  ARGV[2] identity cap (1: one registration per identity; 0: none)
  ARGV[3] rows n (count >= 1); then 2 values per row: user id, identity ('' when none)

  Writes per new row: registrations `u|USER` = `<now ms>|<identity>`; under an identity cap also
  `i|IDENTITY` = USER. Redis TIME is the clock.
  Returns {OK, r_1 .. r_n}, per row 1 registered now, 0 already registered (the same user; the
  first identity stays), or BUYER_CAP_EXCEEDED (the identity is another user's; nothing written
  for that row); or for the whole call {CAMPAIGN_NOT_FOUND, ''}, {DEFINITION_CHANGED, ''} (re-read
  the definition and retry), {CLOSED, ''} (at or past opens_at, or closed: nothing written).
]]
local rcall = redis.call
local OK = 0
local CAMPAIGN_NOT_FOUND = -1
local CLOSED = -5
local BUYER_CAP_EXCEEDED = -23
local DEFINITION_CHANGED = -25

local n = tonumber(ARGV[3])
if not n or n < 1 or #ARGV ~= 3 + 2 * n then
  return redis.error_reply('ERR register: ARGV[3] rows, then 2 values per row')
end
local meta = rcall('HMGET', KEYS[1], 'def', 'opens', 'flag')
if not meta[1] then return {CAMPAIGN_NOT_FOUND, ''} end
if redis.sha1hex(meta[1]) ~= ARGV[1] then return {DEFINITION_CHANGED, ''} end
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if meta[3] == 'closed' or now >= tonumber(meta[2]) then return {CLOSED, ''} end

local capped = ARGV[2] == '1'
local out = {OK}
for i = 0, n - 1 do
  local user, identity = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  local result = 1
  if rcall('HEXISTS', KEYS[2], 'u|' .. user) == 1 then
    result = 0
  elseif capped and identity ~= '' then
    local holder = rcall('HGET', KEYS[2], 'i|' .. identity)
    if holder and holder ~= user then result = BUYER_CAP_EXCEEDED end
  end
  if result == 1 then
    rcall('HSET', KEYS[2], 'u|' .. user, now .. '|' .. identity)
    if capped and identity ~= '' then rcall('HSET', KEYS[2], 'i|' .. identity, user) end
  end
  out[#out + 1] = result
end
return out
