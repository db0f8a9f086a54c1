--[[
  Change a waiting room's admission rate from now on (by Redis TIME); 0 pauses admission.

  KEYS[1] campaign meta hash   KEYS[2] admission hash
  ARGV[1] positions admitted per second from now (count >= 0)
  ARGV[2] most rate changes kept (count): beyond it the change is refused

  The admission hash keeps every change as `rates` = `at_ms:rate,at_ms:rate,...` (in time order;
  `nrates` counts them): the admitted frontier at any instant is the integral of the rate from
  opens_at, each change taking over from its instant (a change before opens_at sets the rate
  the room opens with). A change never moves a position already admitted.
  Returns {OK, now ms}, or {CAMPAIGN_NOT_FOUND, ''}, or {INVALID_STATE, 'too_many_changes'}.
]]
local rcall = redis.call
local OK = 0
local CAMPAIGN_NOT_FOUND = -1
local INVALID_STATE = -11

local rate, most = tonumber(ARGV[1]), tonumber(ARGV[2])
if not rate or rate < 0 or rate ~= math.floor(rate) or not most then
  return redis.error_reply('ERR queue_rate: ARGV[1] must be an integer >= 0')
end
if rcall('HEXISTS', KEYS[1], 'def') == 0 then return {CAMPAIGN_NOT_FOUND, ''} end
if tonumber(rcall('HGET', KEYS[2], 'nrates') or '0') >= most then return {INVALID_STATE, 'too_many_changes'} end
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = rcall('HGET', KEYS[2], 'rates')
local entry = now .. ':' .. string.format('%d', rate)
rcall('HSET', KEYS[2], 'rates', old and (old .. ',' .. entry) or entry)
rcall('HINCRBY', KEYS[2], 'nrates', 1)
return {OK, now}
